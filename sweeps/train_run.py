"""`rewarm train`: one trial of a spec, every knob fixed, on Ray.

A single-worker run trains in one Ray task with the worker's resources (retried on a
process failure); a run of several workers on a Ray Train worker group (DDP). A run name
under the spec's storage path identifies the run: starting the same name again resumes it
from its newest checkpoint that verifies, with the LR schedule, replay position, RNG and
tokens seen exactly where they were.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sweeps.resolve import resolve, trial_config
from sweeps.spec import SpecError, SweepSpec
from trainers.worker import ATTEMPTS_FILE, CURVES_FILE, REPORTS_FILE, CurveLog


class RunFailed(RuntimeError):
    """The run ended without completing (diverged or failed); the message says why."""

    def __init__(self, message: str, user_error: bool = False):
        super().__init__(message)
        self.user_error = user_error  # bad input found inside a worker (e.g. a corrupt checkpoint)


# Raised inside workers for bad input; Ray re-raises them wrapped, so they are told by name.
_USER_ERRORS_IN_WORKERS = ("CheckpointError", "DataError")


@dataclass
class RunOutcome:
    run_dir: Path
    metrics: dict
    timings: dict

    @property
    def status(self) -> str:
        return self.metrics.get("status", "failed")


def train_torch_trainer(trial: dict, spec: SweepSpec, run_name: str, storage: str, callbacks=()):
    """The TorchTrainer of one trial (shared by `rewarm train` and the sweep's trials)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.worker import KEEP_CHECKPOINTS, train_worker

    res = spec.resources
    return TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"trial": trial},
        scaling_config=ScalingConfig(num_workers=res.workers_per_trial, use_gpu=res.gpus_per_worker > 0,
                                     resources_per_worker=worker_resources(spec)),
        run_config=RunConfig(name=run_name, storage_path=storage, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=res.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    )


def worker_resources(spec: SweepSpec) -> dict[str, float]:
    """What one worker holds, as Ray spells resources: {"CPU": n} plus {"GPU": m} with GPUs."""
    res = spec.resources
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}


def in_process(spec: SweepSpec) -> bool:
    """Whether runs of this spec train in one process of their own (a sweep's Tune trial, or
    `rewarm train`'s Ray task) rather than on a Ray Train worker group.

    One worker needs no worker group: a Train controller, placement group and worker actor
    cost ~10 s per run on the embedded default (DESIGN.md), most of a short trial's time.
    """
    return spec.resources.workers_per_trial == 1


def _train_task(trial_json: str, use_gpu: bool) -> None:
    from trainers.config import TrialConfig
    from trainers.worker import record_placement, train_in_process

    cfg = TrialConfig.model_validate_json(trial_json)
    record_placement(cfg.run_dir, "trial_driver")
    train_in_process(cfg, use_gpu)


def run_in_task(cfg, spec: SweepSpec) -> None:
    """A single-worker run as one Ray task holding the worker's CPUs/GPUs. A task whose process
    dies is run again (up to resources.max_failures times, as Train restarts a worker group),
    and the new attempt resumes from the run dir's newest good checkpoint."""
    import ray

    res = spec.resources
    task = ray.remote(_train_task).options(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
                                           max_retries=res.max_failures, retry_exceptions=False)
    ray.get(task.remote(cfg.model_dump_json(), res.gpus_per_worker > 0))


def check_cluster_fits(spec: SweepSpec, resources: dict) -> None:
    res = spec.resources
    need_cpu = res.workers_per_trial * res.cpus_per_worker
    need_gpu = res.workers_per_trial * res.gpus_per_worker
    if need_cpu > resources.get("CPU", 0) or need_gpu > resources.get("GPU", 0):
        raise SpecError(
            f"resources: a trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
            f"({res.workers_per_trial} workers) but the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
            f"{resources.get('GPU', 0):g} GPUs; lower resources.workers_per_trial or cpus/gpus_per_worker")


def run_single(spec: SweepSpec, run_name: str | None = None, stop_after_step: int | None = None,
               address: str | None = None, log=print) -> RunOutcome:
    knobs = spec.fixed_knobs()
    if knobs is None:
        free = [k for k, p in spec.knob_params().items() if p.type != "fixed"]
        raise SpecError(f"search_space.params: `rewarm train` needs every knob fixed; {free} are not "
                        f"(add --set {free[0]}=VALUE)")
    timings = {"start": time.time()}
    resolved = resolve(spec, log=log)
    timings["resolved"] = time.time()
    run_name = run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = spec.storage_dir()
    run_dir = Path(storage) / run_name
    check_storage_writable(storage)
    cfg = trial_config(resolved, knobs, run_dir=run_dir)
    if stop_after_step is not None:
        cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"stop_after_step": stop_after_step})})

    from sweeps.ray_cluster import init_ray

    check_cluster_fits(spec, init_ray(address))
    timings["ray_ready"] = time.time()
    log(f"[rewarm] run {run_name}: {knobs} | {cfg.loop.total_steps} steps of "
        f"{spec.tokens_per_step} tokens | base L_up={resolved.base_reference.L_up:.4f} "
        f"L_down={resolved.base_reference.L_down:.4f}")
    timings["fit_start"] = time.time()
    try:
        if in_process(spec):
            run_in_task(cfg, spec)
        else:
            train_torch_trainer(json.loads(cfg.model_dump_json()), spec, run_name, storage).fit()
    except Exception as exc:  # Ray wraps worker errors; the root cause is what the user needs
        cause = _root_cause(exc)
        user_error = next((name for name in _USER_ERRORS_IN_WORKERS if f"{name}: " in cause), None)
        if user_error:  # drop Ray's wrapper and the module path: the cause is the message
            cause = cause[cause.index(f"{user_error}: "):]
        raise RunFailed(f"run {run_name} failed: {cause}", user_error=bool(user_error)) from exc
    timings["end"] = time.time()
    reports = CurveLog(run_dir / REPORTS_FILE).read()
    metrics = {k: v for k, v in (reports[-1] if reports else {}).items() if not k.startswith("time/")}
    attempts = _read_attempts(run_dir)
    if attempts:
        timings.update({k: v for k, v in attempts[-1].items() if v is not None})
        timings["attempts"] = len(attempts)
    outcome = RunOutcome(run_dir=run_dir, metrics=metrics, timings=timings)
    (run_dir / "summary.json").write_text(json.dumps(
        {"knobs": knobs, "metrics": metrics, "timings": timings,
         "base_reference": resolved.base_reference.model_dump()}, indent=2))
    return outcome


def read_curve(run_dir: Path) -> list[dict]:
    return CurveLog(Path(run_dir) / CURVES_FILE).read()


def _read_attempts(run_dir: Path) -> list[dict]:
    path = run_dir / ATTEMPTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def check_storage_writable(storage: str) -> None:
    if "://" in storage:
        return
    path = Path(storage)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".rewarm-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SpecError(f"storage_path: {storage} is not writable ({exc.strerror})") from None


def _root_cause(exc: BaseException) -> str:
    from ray.exceptions import RayTaskError

    seen = exc
    while True:
        # A failed Ray task re-raises as a RayTaskError that carries the original in `cause`.
        inner = seen.cause if isinstance(seen, RayTaskError) and isinstance(seen.cause, BaseException) else seen.__cause__
        if inner is None:
            break
        seen = inner
    text = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {text[-1] if text else ''}"
