"""`rewarm sweep` / `rewarm resume`: Ray Tune + Optuna over the knobs, each trial in its own process or on Ray Train.

Wiring (Ray 2.60, Train V2; DESIGN.md): the Tune trainable is a function. For a trial of one
worker it runs the training loop itself, holding that worker's CPUs/GPUs (no Train worker
group: ~10 s less per trial). For a trial of several workers it builds a `TorchTrainer` and
calls `.fit()`, with `TuneReportCallback` passing rank 0's reports to Tune; that trial
function needs no CPU: it asks for one unit of the custom resource `rewarm_trial_slot`, so
all CPUs go to Train workers. Either way the trial's run lives at
`<sweep dir>/trials/<trial id>`, so a Tune retry or `Tuner.restore` starts the same run
again and it resumes from its newest good checkpoint (exact resume).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml
from ray.tune import Stopper

from search_spaces.params import Choice, Fixed, LogUniform, Uniform, bounds
from sweeps.resolve import ResolvedSweep, resolve, trial_config
from sweeps.spec import SpecError, SweepSpec, validate_spec
from sweeps.tracking import Tracker, check_reachable
from sweeps.train_run import in_process, worker_resources

TRIAL_SLOT = "rewarm_trial_slot"
SPEC_FILE = "spec.yaml"
TRIALS_DIR = "trials"


@dataclass
class SweepOutcome:
    sweep_dir: Path
    parent_run_id: str
    trials: list[dict]  # one summary per trial: id, knobs, status, final metrics

    def best(self) -> dict | None:
        done = [t for t in self.trials if t["status"] == "completed" and "objective" in t["metrics"]]
        return max(done, key=lambda t: t["metrics"]["objective"]) if done else None


# ---------------------------------------------------------------------- the trial


def run_trial(config: dict, resolved: ResolvedSweep, sweep_dir: str) -> None:
    """The Tune function trainable: one trial = one run of the loop.

    A single-worker trial runs the loop right here, in the Tune trial's process; a trial of
    several workers is a Ray Train run (DDP over a worker group) that this function drives.
    Either way the run lives at `<sweep dir>/trials/<trial id>` and leaves the same files.
    """
    from ray import tune

    from trainers.worker import record_placement, train_in_process

    knobs = {k: config[k] for k in ("warmup_frac", "max_lr", "replay_ratio", "schedule")}
    trial_id = tune.get_context().get_trial_id()
    trials_root = Path(sweep_dir) / TRIALS_DIR
    record_placement(trials_root / trial_id, "trial_driver")
    cfg = trial_config(resolved, knobs, run_dir=trials_root / trial_id)
    res = resolved.spec.resources
    if in_process(resolved.spec):
        train_in_process(cfg, use_gpu=res.gpus_per_worker > 0, send=tune.report)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from sweeps.train_run import train_torch_trainer

    trainer = train_torch_trainer(json.loads(cfg.model_dump_json()), resolved.spec, run_name=trial_id,
                                  storage=str(trials_root), callbacks=[TuneReportCallback()])
    trainer.fit()


def trial_resources(spec: SweepSpec) -> dict:
    """What one Tune trial asks Ray for. In-process trials hold their worker's CPUs and GPUs
    themselves; a Ray Train trial's driver holds only a trial slot (its workers hold the rest)."""
    return worker_resources(spec) if in_process(spec) else {TRIAL_SLOT: 1}


# ---------------------------------------------------------------------- search and scheduling


class OptunaSpace:
    """Define-by-run Optuna space from typed params; fixed knobs are returned as constants.

    A class, not a closure: Tune pickles the searcher (with its space) into the sweep's
    experiment state, which is what lets `rewarm resume` keep the searcher's history.
    """

    def __init__(self, params: dict):
        self.params = params

    def __call__(self, trial):
        constants = {}
        for name, p in self.params.items():
            if isinstance(p, Fixed):
                constants[name] = p.value
            elif isinstance(p, LogUniform):
                trial.suggest_float(name, p.low, p.high, log=True)
            elif isinstance(p, Uniform):
                trial.suggest_float(name, p.low, p.high)
            elif isinstance(p, Choice):
                trial.suggest_categorical(name, list(p.values))
        return constants


def make_searcher(spec: SweepSpec, params: dict):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.objective.kind == "pareto":
        sampler = optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, spec.budget.max_concurrent * 2))
        return OptunaSearch(space=OptunaSpace(params), metric=["gain", "forgetting"], mode=["max", "min"],
                            sampler=sampler)
    startup = min(10, max(3, spec.budget.num_trials // 3))  # random start, then TPE
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup)
    return OptunaSearch(space=OptunaSpace(params), metric="objective", mode="max", sampler=sampler)


def grace_tokens(spec: SweepSpec, params: dict) -> int:
    """No stop before the longest warmup in the space plus a recovery window, on an eval point.

    A re-warmed trial's loss rises during and just after warmup (Gupta et al. 2023); judging
    it there kills exactly the high-LR trials that end best.
    """
    if spec.scheduler.grace_tokens is not None:
        return spec.scheduler.grace_tokens
    max_warmup = (bounds(params["warmup_frac"]) or (0.0, 0.0))[1]
    tokens = (max_warmup + spec.scheduler.recovery_frac) * spec.budget.tokens_per_trial
    every = eval_tokens(spec)
    return max(every, math.ceil(tokens / every) * every)


def eval_tokens(spec: SweepSpec) -> int:
    """Tokens between two report points."""
    return max(1, round(spec.training.eval_every_tokens / spec.tokens_per_step)) * spec.tokens_per_step


def stop_rule_config(spec: SweepSpec):
    from sweeps.stopper import StopRuleConfig

    s = spec.scheduler
    return StopRuleConfig(
        max_tokens=spec.steps_per_trial * spec.tokens_per_step,
        recovery_tokens=round(s.recovery_frac * spec.budget.tokens_per_trial), min_grace_tokens=eval_tokens(spec),
        reduction_factor=s.reduction_factor, smoothing=s.smoothing, forecast=s.forecast,
        forecast_min_trials=s.forecast_min_trials, forecast_margin_sd=s.forecast_margin_sd)


def make_scheduler(spec: SweepSpec, params: dict, decisions_root: str | None = None):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweeps.stopper import ScheduleAwareScheduler

    if spec.scheduler.kind == "none":
        return FIFOScheduler()
    if spec.scheduler.kind == "rewarm":
        return ScheduleAwareScheduler(stop_rule_config(spec), decisions_root)
    # time_attr is our own token count: Tune's training_iteration double-counts after a
    # Train retry and restarts at 0 after Tuner.restore (DESIGN.md).
    max_t = spec.steps_per_trial * spec.tokens_per_step
    return ASHAScheduler(time_attr="tokens", metric="objective", mode="max", max_t=max_t,
                         grace_period=min(grace_tokens(spec, params), max_t),  # grace >= budget: never stop
                         reduction_factor=spec.scheduler.reduction_factor)


class DivergenceStopper(Stopper):
    """Stop a trial at its first report of divergence (a non-finite or runaway loss).

    The training loop already ends a diverged run itself; this is the driver's safety net
    for any trainable that keeps reporting after diverging, and it needs no grace period.
    """

    def __call__(self, trial_id: str, result: dict) -> bool:
        loss = result.get("loss")
        return result.get("status") == "diverged" or (isinstance(loss, float) and not math.isfinite(loss))

    def stop_all(self) -> bool:
        return False


def max_concurrent(spec: SweepSpec, cluster: dict) -> int:
    per_trial = spec.resources.workers_per_trial * spec.resources.cpus_per_worker
    fit = max(1, int(cluster.get("CPU", 1) // per_trial))
    if spec.resources.gpus_per_worker:
        fit = min(fit, max(1, int(cluster.get("GPU", 0) // (spec.resources.workers_per_trial * spec.resources.gpus_per_worker))))
    return min(spec.budget.max_concurrent, fit)


def flat_params(spec: SweepSpec) -> dict:
    """Fixed settings of every trial, flattened for MLflow params."""
    raw = spec.model_dump(mode="json", exclude={"search_space", "tracking", "name"})

    def walk(prefix, node, out):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v, out)
            else:
                out[key] = v
        return out

    return walk("", raw, {})


# ---------------------------------------------------------------------- the driver


def sweep_dir_for(spec: SweepSpec) -> Path:
    return Path(spec.storage_dir()) / spec.name


def run_sweep(spec: SweepSpec, address: str | None = None, resume: bool = False, log=print) -> SweepOutcome:
    from ray import tune

    from sweeps.progress import SweepCallback
    from sweeps.ray_cluster import init_ray
    from sweeps.tune_state import serialize_state_uploads
    from sweeps.train_run import check_storage_writable, check_cluster_fits

    params = spec.knob_params()
    uri = spec.tracking_uri()
    check_reachable(uri)
    sweep_dir = sweep_dir_for(spec)
    if not resume and (sweep_dir / "tuner.pkl").exists():
        raise SpecError(f"name: sweep {spec.name!r} already exists in {sweep_dir}; "
                        f"continue it with `rewarm resume {spec.name}` or choose another name")
    check_storage_writable(str(sweep_dir.parent))
    tracker = Tracker(uri, spec.tracking.experiment, spec.name)
    resolved = resolve(spec, log=log)
    cluster = init_ray(address, trial_slots=max(64, spec.budget.max_concurrent))
    check_cluster_fits(spec, cluster)
    if not in_process(spec) and cluster.get(TRIAL_SLOT, 0) < 1:
        raise SpecError(f"resources: the Ray cluster has no {TRIAL_SLOT!r} resource for trial drivers; "
                        f"start its head node with --resources='{{\"{TRIAL_SLOT}\": 64}}'")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    (sweep_dir / SPEC_FILE).write_text(spec_yaml)

    parent = tracker.start_parent(
        spec_yaml, flat_params(spec), resolved.base_reference.model_dump(),
        {k: p.describe() for k, p in params.items()}, resume=resume)
    concurrency = max_concurrent(spec, cluster)
    callback = SweepCallback(tracker, spec, str(sweep_dir / TRIALS_DIR), log=log)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, resolved=resolved, sweep_dir=str(sweep_dir)), trial_resources(spec))
    log(f"[rewarm] sweep {spec.name}: {spec.budget.num_trials} trials x {spec.budget.tokens_per_trial} tokens, "
        f"{concurrency} at a time, {spec.objective.kind} objective, scheduler {spec.scheduler.kind}"
        + (f" (grace {grace_tokens(spec, params)} tokens)" if spec.scheduler.kind == "asha" else ""))
    log(f"[rewarm] base model: L_up={resolved.base_reference.L_up:.4f} L_down={resolved.base_reference.L_down:.4f}"
        f" | MLflow {uri} (experiment {spec.tracking.experiment!r}, parent run {parent})")
    serialize_state_uploads()  # Tune's state saves must not race their uploads (tune_state.py)
    # A retried or resumed trial reports its steps again from its checkpoint; Optuna keeps the
    # first value of each step and warns once per step. Expected, so not shown to the user.
    warnings.filterwarnings("ignore", message=r"The reported value is ignored because this `step=\d+` is already reported")
    t0 = time.time()
    status = "failed"
    try:
        if resume and tune.Tuner.can_restore(str(sweep_dir)):
            tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=True)
            callback = adopt_restored_callback(tuner, callback)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(spec, params),
                    scheduler=make_scheduler(spec, params, str(sweep_dir / TRIALS_DIR)),
                    num_samples=spec.budget.num_trials, max_concurrent_trials=concurrency,
                    # A finished trial's process (torch and transformers imported, ~3 s) starts
                    # the next trial; the loop seeds every RNG itself, so nothing carries over.
                    reuse_actors=True),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=str(sweep_dir.parent), callbacks=[callback], verbose=0,
                    # The schedule-aware stopper stops divergence itself (and logs why).
                    stop=None if spec.scheduler.kind == "rewarm" else DivergenceStopper(),
                    failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures)),
            )
        grid = tuner.fit()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        (sweep_dir / "driver_timings.json").write_text(json.dumps(callback.timings))
        unlogged = callback.flush(spec.tracking.flush_timeout_s)
        if unlogged:
            log(f"[rewarm] MLflow still unavailable after {spec.tracking.flush_timeout_s:.0f} s: trials {unlogged} "
                f"are not fully logged; their full curves are on disk in {sweep_dir / TRIALS_DIR}/<trial>/")
            status = "incomplete_tracking" if status == "completed" else status
        try:
            if status == "completed":
                # A trial started just before a killed driver's last state save is unknown to the
                # restored Tuner and will never continue: close its run instead of leaving it RUNNING.
                tracker.close_orphans()
            trials = callback.summaries()
            tracker.finish_parent(status, {"trials": trials, "wall_s": time.time() - t0})
        except Exception as exc:  # noqa: BLE001 - tracking down at the very end: say so, lose nothing
            log(f"[rewarm] could not close the sweep's MLflow run ({type(exc).__name__}); results are in {sweep_dir}")
            trials = []
    if grid.errors and not trials:
        raise RuntimeError(f"all trials failed; first error: {grid.errors[0]}")
    return SweepOutcome(sweep_dir=sweep_dir, parent_run_id=parent, trials=trials)


def adopt_restored_callback(tuner, fresh):
    """The SweepCallback a restored Tuner will call, bound to this driver's tracker and log.

    Tuner.restore brings back the callback pickled with the sweep's run config, not `fresh`;
    the end-of-sweep flush must go through the one Tune fed with trial events. Reached
    through the Tuner's local internals (Ray has no public accessor); where that fails,
    `fresh` still closes the sweep from MLflow's own records.
    """
    try:
        callbacks = tuner._local_tuner.get_run_config().callbacks or []
    except AttributeError:
        return fresh
    restored = next((cb for cb in callbacks if type(cb) is type(fresh)), None)
    if restored is None:
        return fresh
    restored.tracker, restored.log = fresh.tracker, fresh.log
    return restored


def load_sweep_spec(sweep: str, storage_path: str = "rewarm_runs") -> SweepSpec:
    """The spec a sweep was started with, from its directory (a path, or a name under storage)."""
    candidates = [Path(sweep), Path(storage_path).expanduser() / sweep]
    for d in candidates:
        if (d / SPEC_FILE).exists():
            return validate_spec(yaml.safe_load((d / SPEC_FILE).read_text()), source=str(d / SPEC_FILE))
    raise SpecError(f"sweep {sweep!r} not found (looked for {SPEC_FILE} in {', '.join(str(c) for c in candidates)}); "
                    "pass the sweep directory or --storage-path")
