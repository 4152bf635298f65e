"""`rewarm train`: one run of a spec, every knob fixed, on Ray, recorded in MLflow like a trial.

A single-worker run trains in one Ray task with the worker's resources (retried on a
process failure); a run of several workers on a Ray Train worker group (DDP). A run name
under the spec's storage path identifies the run: starting the same name again resumes it
from its newest checkpoint that verifies, with the LR schedule, replay position, RNG and
tokens seen exactly where they were.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sweeps.config.loading import SpecError
from sweeps.config.resolve import resolve, trial_config
from sweeps.config.spec import SweepSpec
from sweeps.execution import preflight
from sweeps.execution.base_reference import on_trial_hardware
from sweeps.execution.cluster import init_ray
from sweeps.execution.failures import raise_as_run_failure
from sweeps.execution.trial import in_process, torch_trainer
from sweeps.settings import apply_process_settings
from sweeps.tracking.statuses import TrialStatus, trial_status
from sweeps.tracking.store import check_reachable
from sweeps.tracking.tracker import Tracker
from sweeps.tracking.trial_sync import TrialSync
from trainers.checkpoint_files import linkable_artifacts
from trainers.report_point import RunStatus
from trainers.run_dir import ATTEMPTS_FILE, CURVES_FILE, REPORTS_FILE, SUMMARY_FILE, CurveLog, read_jsonl


@dataclass
class RunOutcome:
    run_dir: Path
    metrics: dict  # the run's last report point (trainers/report_point.py), without time/ fields
    timings: dict

    @property
    def status(self) -> str:
        """The run's last report status (trainers/report_point.py: RunStatus); "failed" with no report."""
        return self.metrics.get("status", TrialStatus.FAILED)

    @property
    def diverged(self) -> bool:
        return self.status == RunStatus.DIVERGED


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


def run_single(spec: SweepSpec, run_name: str | None = None, stop_after_step: int | None = None,
               address: str | None = None, log=print) -> RunOutcome:
    apply_process_settings()
    knobs = spec.fixed_knobs()
    if knobs is None:
        free = [k for k, p in spec.knob_params().items() if p.type != "fixed"]
        raise SpecError(f"search_space.params: `rewarm train` needs every knob fixed; {free} are not "
                        f"(add --set {free[0]}=VALUE)")
    timings = {"start": time.time()}
    spec = spec.anchored()
    check_reachable(spec.tracking_uri())
    preflight.check_cluster_fits(spec, init_ray(address))
    timings["ray_ready"] = time.time()
    resolved = resolve(spec, log=log, measure_base=on_trial_hardware(spec, log))
    timings["resolved"] = time.time()
    run_name = run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = spec.storage_dir()
    run_dir = Path(storage) / run_name
    preflight.check_storage_writable(storage)
    cfg = trial_config(resolved, knobs, run_dir=run_dir)
    if stop_after_step is not None:
        cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"stop_after_step": stop_after_step})})

    log(f"[rewarm] run {run_name}: {knobs} | {cfg.loop.total_steps} steps of "
        f"{spec.tokens_per_step} tokens | base L_up={resolved.base_reference.L_up:.4f} "
        f"L_down={resolved.base_reference.L_down:.4f}")
    timings["fit_start"] = time.time()
    tracked = TrackedRun(spec, run_name, knobs, log)
    try:
        with tracked.live():
            if in_process(spec):
                run_in_task(cfg, spec)
            else:
                torch_trainer(json.loads(cfg.model_dump_json()), spec, run_name, storage).fit()
    except BaseException as exc:
        tracked.close(TrialStatus.PAUSED if isinstance(exc, KeyboardInterrupt) else TrialStatus.FAILED)
        if not isinstance(exc, Exception):
            raise
        _raise_run_error(exc, run_name)
    tracked.close()
    timings["end"] = time.time()
    reports = CurveLog(run_dir / REPORTS_FILE).read()
    metrics = {k: v for k, v in (reports[-1] if reports else {}).items() if not k.startswith("time/")}
    attempts = read_jsonl(run_dir / ATTEMPTS_FILE)
    if attempts:
        timings.update({k: v for k, v in attempts[-1].items() if v is not None})
        timings["attempts"] = len(attempts)
    outcome = RunOutcome(run_dir=run_dir, metrics=metrics, timings=timings)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(
        {"knobs": knobs, "metrics": metrics, "timings": timings,
         "base_reference": resolved.base_reference.model_dump()}, indent=2))
    return outcome


class TrackedRun:
    """A `rewarm train` run's MLflow run, kept in step with its run dir like a sweep trial's.

    Found again by its run name when the same --run-name continues (never a second run), its
    curves logged from the run dir while it trains (a thread, every tracking.log_interval_s),
    and closed with its status, final metrics and checkpoints. A tracking outage is ridden out
    as in a sweep (TrialSync): the curves stay on disk and are logged when the store is back.
    """

    def __init__(self, spec: SweepSpec, run_name: str, knobs: dict, log):
        self.run_name, self.log, self.flush_timeout_s = run_name, log, spec.tracking.flush_timeout_s
        self.storage = Path(spec.storage_dir())
        tracker = Tracker(spec.tracking_uri(), spec.tracking.experiment, spec.name, standalone=True)
        self.sync = TrialSync(tracker, self.storage, spec.mlflow_params(), spec.tracking.log_interval_s, log=log)
        self.sync.start(run_name, knobs)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # TrialSync is used by one thread at a time

    @contextmanager
    def live(self):
        def keep_logging():
            while not self._stop.wait(max(self.sync.log_interval_s, 1.0)):
                with self._lock:
                    self.sync.sync_if_due(self.run_name)

        thread = threading.Thread(target=keep_logging, name="rewarm-train-mlflow", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=60)  # a sync stuck on a dead server must not hold the command

    def close(self, ended_by: TrialStatus | None = None) -> None:
        """Close the run: its status from its last report, or `ended_by` (FAILED: the run raised;
        PAUSED: interrupted, continued by the same --run-name from its last checkpoint).

        Never raises: the run's own outcome (or error) is what the user must see, and its
        summary is still written; a tracking failure here is said in one line."""
        try:
            with self._lock:
                self._close(ended_by)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self.log(f"[rewarm] could not close run {self.run_name} in MLflow ({type(exc).__name__}: "
                     f"{str(exc)[:200]}); its curves are in {self.storage / self.run_name}")

    def _close(self, ended_by: TrialStatus | None) -> None:
        run_dir = self.storage / self.run_name
        final = self.sync.last_report(self.run_name) or {}
        artifacts, refused = linkable_artifacts(run_dir)
        for reason in refused:
            self.log(f"[rewarm] not linking {reason}")
        self.sync.finish(self.run_name, ended_by or trial_status(final), final, artifacts, files=[], tags={})
        if self.sync.flush(self.flush_timeout_s):
            self.log(f"[rewarm] MLflow unavailable: run {self.run_name} is not fully logged; its curves are in {run_dir}")


def _raise_run_error(exc: Exception, run_name: str):
    """The run's failure as RunInputError (bad input found in a worker) or RunFailed."""
    raise_as_run_failure(exc, f"run {run_name}")


def read_curve(run_dir: Path) -> list[dict]:
    return CurveLog(Path(run_dir) / CURVES_FILE).read()
