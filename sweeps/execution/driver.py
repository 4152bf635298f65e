"""`rewarm sweep` / `rewarm resume`: Ray Tune + Optuna over the knobs, one trial per point.

The driver checks everything it can first (tracking server, storage, cluster), resolves the
spec once (model and data prepared, base reference measured: sweeps/config/resolve.py),
opens the sweep's MLflow parent run, and hands Tune the trial function (trial.py), the
searcher (search.py), the scheduler (schedulers.py) and the callback that logs MLflow
(callback.py). A resumed sweep restores Tune's experiment state, so the searcher's history,
the trials and their MLflow runs all continue.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from sweeps.config.layout import DRIVER_TIMINGS_FILE, SPEC_FILE, StateIncompatible, sweep_dir, trials_dir
from sweeps.config.resolve import resolve
from sweeps.config.spec import SweepSpec
from sweeps.execution import preflight
from sweeps.execution.callback import SweepCallback
from sweeps.execution.base_reference import on_trial_hardware
from sweeps.execution.cluster import init_ray
from sweeps.execution.schedulers import DivergenceStopper, make_scheduler
from sweeps.execution.search import make_searcher
from sweeps.execution.trial import in_process, run_trial, trial_resources
from sweeps.settings import apply_process_settings
from sweeps.tracking.statuses import SweepStatus
from sweeps.tracking.store import TrackingError, check_reachable, is_outage
from sweeps.tracking.study import display_url, open_study_storage
from sweeps.tracking.records import best_summary
from sweeps.tracking.tracker import STUDY_STORAGE_TAG, STUDY_TAG, Tracker, best_trial_tags
from trainers import ray_compat


@dataclass
class SweepOutcome:
    sweep_dir: Path
    parent_run_id: str
    trials: list[dict]  # one summary per trial: id, knobs, status, final metrics (tracking/records.py)

    def best(self) -> dict | None:
        return best_summary(self.trials)


def sweep_dir_for(spec: SweepSpec) -> Path:
    return sweep_dir(spec.storage_dir(), spec.name)


def max_concurrent(spec: SweepSpec, cluster: dict) -> int:
    """Trials at once: the spec's cap, and what the cluster's CPUs (and GPUs) can hold."""
    per_trial = spec.resources.workers_per_trial * spec.resources.cpus_per_worker
    fit = max(1, int(cluster.get("CPU", 1) // per_trial))
    if spec.resources.gpus_per_worker:
        fit = min(fit, max(1, int(cluster.get("GPU", 0) // (spec.resources.workers_per_trial * spec.resources.gpus_per_worker))))
    return min(spec.budget.max_concurrent, fit)


def run_sweep(spec: SweepSpec, address: str | None = None, resume: bool = False, log=print,
              progress=None) -> SweepOutcome:
    """Run (or, with `resume`, continue) the sweep of `spec`; its trials' summaries from MLflow.
    `progress` (a ProgressView, whose `line` is then the natural `log`) draws the live view."""
    from ray import tune

    apply_process_settings()
    spec = spec.anchored()  # absolute places, written to spec.yaml: resume finds the same sweep from anywhere
    directory = sweep_dir_for(spec)
    tracker, resolved, cluster, study_storage = prepare(spec, directory, address, resume, log)
    params = spec.knob_params()
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    mlflow_params = spec.mlflow_params()
    parent = tracker.start_parent(spec_yaml, mlflow_params, resolved.base_reference.model_dump(),
                                  {k: p.describe() for k, p in params.items()}, resume=resume,
                                  tags={STUDY_TAG: spec.name, STUDY_STORAGE_TAG: display_url(spec.study_storage_url())})
    (directory / SPEC_FILE).write_text(spec_yaml)  # only once MLflow took the sweep: a refused resume changes nothing
    concurrency = max_concurrent(spec, cluster)
    callback = SweepCallback(tracker, spec, str(trials_dir(directory)), mlflow_params, log=log, new_sweep=not resume)
    callback.show_progress(progress)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, resolved=resolved, sweep_dir=str(directory)), trial_resources(spec))
    log(f"[rewarm] sweep {spec.name}: {spec.budget.num_trials} trials x {spec.budget.tokens_per_trial} tokens, "
        f"{concurrency} at a time, {spec.objective.kind} objective, scheduler {spec.scheduler.kind}"
        + (f" (grace {spec.asha_grace_tokens(params)} tokens)" if spec.scheduler.kind == "asha" else ""))
    log(f"[rewarm] base model: L_up={resolved.base_reference.L_up:.4f} L_down={resolved.base_reference.L_down:.4f}"
        f" | MLflow {tracker.uri} (experiment {spec.tracking.experiment!r}, parent run {parent})"
        f" | Optuna study {spec.name!r} in {display_url(spec.study_storage_url())}")
    ray_compat.serialize_state_uploads()  # Tune's state saves must not race their uploads
    ray_compat.atomic_state_uploads()  # nor a killed driver leave them empty
    # A retried or resumed trial reports its steps again from its checkpoint; Optuna keeps the
    # first value of each step and warns once per step. Expected, so not shown to the user.
    warnings.filterwarnings("ignore", message=r"The reported value is ignored because this `step=\d+` is already reported")
    t0 = time.time()
    status = SweepStatus.FAILED
    try:
        if resume:  # prepare() proved Tune's state is there: never a fresh sweep under the old run
            tuner = restore_tuner(directory, trainable)
            callback = adopt_restored_callback(tuner, callback)
            callback.adopt_earlier_trials()
            callback.apply_retention()  # what trials that ended before the stop no longer need
        else:
            tuner = new_tuner(spec, params, trainable, callback, directory, concurrency, study_storage)
        grid = tuner.fit()
        status = SweepStatus.COMPLETED
    except KeyboardInterrupt:
        status = SweepStatus.INTERRUPTED
        raise
    finally:
        trials = finish_sweep(spec, tracker, callback, status, time.time() - t0, directory, log)
    if grid.errors and not trials:
        raise RuntimeError(f"all trials failed; first error: {grid.errors[0]}")
    return SweepOutcome(sweep_dir=directory, parent_run_id=parent, trials=trials)


def prepare(spec: SweepSpec, directory: Path, address: str | None, resume: bool, log):
    """Every check that can fail before a trial starts, then the resolved sweep and Ray:
    (tracker, resolved sweep, cluster resources). Cheap checks come first."""
    uri = spec.tracking_uri()
    check_reachable(uri)
    if resume:
        preflight.check_resumable(spec, directory)
        preflight.check_sweep_tracked(spec, uri)  # read only: nothing is created in a wrong store
    else:
        preflight.check_new_sweep(spec, directory)
    preflight.check_storage_writable(str(directory.parent))
    study_storage = open_study_storage(spec.study_storage_url())  # may live in the storage path
    if not resume:
        preflight.check_new_study(spec, study_storage)
    cluster = init_ray(address, trial_slots=max(64, spec.budget.max_concurrent))
    preflight.check_cluster_fits(spec, cluster)
    resolved = resolve(spec, log=log, measure_base=on_trial_hardware(spec, log))
    if not in_process(spec):
        preflight.check_trial_slots(cluster)
    directory.mkdir(parents=True, exist_ok=True)
    return Tracker(uri, spec.tracking.experiment, spec.name), resolved, cluster, study_storage


def new_tuner(spec: SweepSpec, params: dict, trainable, callback: SweepCallback, directory: Path, concurrency: int,
              study_storage=None):
    """The Tuner of a new sweep: searcher (its study in `study_storage`), scheduler, stopper,
    callback and failure policy."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, params, study_storage),
            scheduler=make_scheduler(spec, params, str(trials_dir(directory))),
            num_samples=spec.budget.num_trials, max_concurrent_trials=concurrency,
            # A finished trial's process (torch and transformers imported, ~3 s) starts
            # the next trial; the loop seeds every RNG itself, so nothing carries over.
            reuse_actors=True),
        run_config=tune.RunConfig(
            # Of Tune's own result logs only the JSON one (its CSV and TensorBoard ones are off:
            # sweeps/settings.py): Tuner.fit() reads it back into its ResultGrid, and warns per
            # trial where it is missing.
            name=spec.name, storage_path=str(directory.parent), callbacks=[callback, JsonLoggerCallback()],
            verbose=0,
            # The schedule-aware stopper stops divergence itself (and logs why).
            stop=None if spec.scheduler.kind == "rewarm" else DivergenceStopper(),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures)),
    )


def restore_tuner(directory: Path, trainable):
    """The Tuner of an interrupted sweep, from Tune's experiment state in its directory."""
    from ray import tune

    try:
        return tune.Tuner.restore(str(directory), trainable=trainable, resume_errored=True)
    except (ModuleNotFoundError, AttributeError) as exc:  # pickles naming code that no longer exists
        raise StateIncompatible(f"sweep state in {directory} was written by another version of Rewarm ({exc}); "
                                f"it cannot be resumed by this one: its results are in MLflow, start a new sweep name") from None
    except Exception as exc:
        # The pickled searcher reconnects to its Optuna study's database as it is unpickled.
        if type(exc).__module__.startswith("sqlalchemy"):
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"cannot resume sweep from {directory}: its Optuna study's database (where it was "
                                f"when the sweep started) cannot be opened ({first}); make it reachable again") from None
        raise


def finish_sweep(spec: SweepSpec, tracker: Tracker, callback: SweepCallback, status: SweepStatus, wall_s: float,
                 directory: Path, log) -> list[dict]:
    """Whatever ended the sweep: write the driver's timings, flush MLflow, close the parent run
    with every trial's summary. Returns the summaries ([] where MLflow could not give them).

    Runs in the driver's `finally`. A tracking outage here is logged, never raised: the sweep
    dir has everything. Any other tracking failure raises after a completed sweep (a bug), but
    is only logged while another error is on its way out (an interrupt, a failed fit), so that
    the first error is the one the user sees.
    """
    completed = status == SweepStatus.COMPLETED
    try:
        (directory / DRIVER_TIMINGS_FILE).write_text(json.dumps(callback.timings))
        unlogged = callback.flush(spec.tracking.flush_timeout_s)
        if unlogged:
            log(f"[rewarm] MLflow still unavailable after {spec.tracking.flush_timeout_s:.0f} s: trials {unlogged} "
                f"are not fully logged; their full curves are on disk in {trials_dir(directory)}/<trial>/")
            status = SweepStatus.INCOMPLETE_TRACKING if completed else status
        if status == SweepStatus.COMPLETED:  # and fully logged
            # A trial started just before a killed driver's last state save is unknown to the
            # restored Tuner and will never continue: close its run instead of leaving it RUNNING.
            tracker.close_orphans()
        callback.apply_retention()  # trials whose close was still pending at their end
        trials = callback.summaries()
        best = best_summary(trials)  # from MLflow's records: right across resumes and retries
        if best is not None:
            tracker.set_parent_tags(best_trial_tags(best["trial_id"], best["run_id"], best["metrics"]["objective"],
                                                    best["knobs"]))
        tracker.finish_parent(status, {"trials": trials, "wall_s": wall_s})
        return trials
    except Exception as exc:
        if completed and not is_outage(exc):
            raise
        log(f"[rewarm] could not close the sweep's MLflow run ({type(exc).__name__}: {str(exc)[:200]}); "
            f"results are in {directory}")
        return []


def adopt_restored_callback(tuner, fresh: SweepCallback) -> SweepCallback:
    """The SweepCallback a restored Tuner will call, bound to this driver's tracker and log.

    Tuner.restore brings back the callback pickled with the sweep's run config, not `fresh`;
    the end-of-sweep flush must go through the one Tune fed with trial events. Where Ray's
    private accessor moved (ray_compat), `fresh` still closes the sweep from MLflow's records.
    """
    restored = next((cb for cb in ray_compat.restored_callbacks(tuner) or [] if type(cb) is type(fresh)), None)
    if restored is None:
        return fresh
    restored.bind(fresh)
    return restored
