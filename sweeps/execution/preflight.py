"""Checks made before anything trains: each fails with one line that names the field and the fix.

A sweep or run that cannot succeed (a cluster too small, storage that cannot be written, a
name already taken) must say so before the base model is loaded or a trial is scheduled.
"""

from __future__ import annotations

import json
from pathlib import Path

from sweeps.config.loading import SpecError
from sweeps.config.spec import SweepSpec
from sweeps.execution.cluster import TRIAL_SLOT
from sweeps.tracking.store import TrackingError
from trainers.ray_compat import TUNE_STATE_PREFIX

# Tune's experiment state, saved as trials run: one trial table per save, named by the save's
# session stamp (ray/tune/execution/experiment_state.py).
TUNE_STATE_GLOB = f"{TUNE_STATE_PREFIX}*.json"


def check_cluster_fits(spec: SweepSpec, resources: dict) -> None:
    """One trial's workers fit on the cluster's CPUs and GPUs."""
    res = spec.resources
    need_cpu = res.workers_per_trial * res.cpus_per_worker
    need_gpu = res.workers_per_trial * res.gpus_per_worker
    if need_cpu > resources.get("CPU", 0) or need_gpu > resources.get("GPU", 0):
        raise SpecError(
            f"resources: a trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
            f"({res.workers_per_trial} workers) but the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
            f"{resources.get('GPU', 0):g} GPUs; lower resources.workers_per_trial or cpus/gpus_per_worker")


def check_trial_slots(resources: dict) -> None:
    """A Ray Train trial's driver holds a trial slot; the cluster must offer them."""
    if resources.get(TRIAL_SLOT, 0) < 1:
        raise SpecError(f"resources: the Ray cluster has no {TRIAL_SLOT!r} resource for trial drivers; "
                        f"start its head node with --resources='{{\"{TRIAL_SLOT}\": 64}}'")


def check_storage_writable(storage: str) -> None:
    """The storage path exists (or can be made) and takes a file."""
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


def check_new_sweep(spec: SweepSpec, sweep_dir: Path) -> None:
    """A new sweep must not reuse the directory of an existing one (that is `rewarm resume`)."""
    from ray import tune

    if sweep_dir.exists() and tune.Tuner.can_restore(str(sweep_dir)):
        raise SpecError(f"name: sweep {spec.name!r} already exists in {sweep_dir}; "
                        f"continue it with `rewarm resume {spec.name}` or choose another name")


def check_resumable(spec: SweepSpec, sweep_dir: Path) -> None:
    """`rewarm resume` continues Tune's saved experiment or refuses: a fresh sweep under the old
    MLflow parent run would put new trials beside the old ones."""
    from ray import tune

    # can_restore only looks for the Tuner's pickle, written before any trial; a driver killed
    # before Tune's first state save has no trials to restore (ray/tune/tuner.py).
    if not tune.Tuner.can_restore(str(sweep_dir)) or not any(sweep_dir.glob(TUNE_STATE_GLOB)):
        raise SpecError(f"cannot resume sweep {spec.name!r}: {sweep_dir} holds no Tune experiment state (the driver "
                        f"stopped before Tune saved any, or the directory was moved without it); what it recorded "
                        f"is in MLflow; start it again with `rewarm sweep` under a new name")
    # Tune restores from its newest save (by the session stamp in the names: trial table,
    # searcher, search generator, callbacks). An empty or cut file there (a driver killed while
    # saving, before Rewarm replaced files whole: trainers/ray_compat.atomic_state_uploads)
    # makes Tune log "Restarting experiment" and start over, its trials again from step 0.
    newest = max(sweep_dir.glob(TUNE_STATE_GLOB), key=lambda p: p.name)
    stamp = newest.name[len(TUNE_STATE_PREFIX):-len(".json")]
    for path in sorted(p for p in sweep_dir.glob(f"*-{stamp}.*") if p.suffix in (".json", ".pkl")):
        problem = _cut_state_file(path)
        if problem:
            raise SpecError(f"cannot resume sweep {spec.name!r}: its Tune state {path} {problem} (the driver was "
                            f"stopped while saving it), and Tune would start the sweep over; what it recorded is "
                            f"in MLflow; start it again with `rewarm sweep` under a new name")


def _cut_state_file(path: Path) -> str | None:
    """What is wrong with one of Tune's state files, or None. The trial table is JSON; the
    others are pickles (search_gen_state-*.json too), checked by their last byte, the STOP
    opcode every pickle ends with: unpickling the searcher would connect to its study."""
    data = path.read_bytes()
    if not data:
        return "is empty"
    if path.name.startswith(TUNE_STATE_PREFIX):
        try:
            json.loads(data)
        except ValueError:
            return "is cut short (not JSON)"
    elif not data.endswith(b"."):
        return "is cut short (not a whole pickle)"
    return None


def check_new_study(spec: SweepSpec, storage) -> None:
    """A new sweep's Optuna study name is free: Ray's searcher would load and extend an old one."""
    from sweeps.tracking.study import display_url

    if any(s.study_name == spec.name for s in storage.get_all_studies()):
        raise SpecError(f"name: an Optuna study {spec.name!r} already exists in {display_url(spec.study_storage_url())}; "
                        f"choose another sweep name, or delete it with `optuna delete-study --study-name {spec.name} "
                        f"--storage URL`")


def check_sweep_tracked(spec: SweepSpec, uri: str) -> None:
    """A resumed sweep's parent run is in the tracking store it names, read without creating
    anything: resuming with another store (another working directory's default) must not put
    a second copy of the sweep there."""
    from sweeps.tracking.records import SweepNotFound, load_sweep
    from sweeps.tracking.store import open_client

    try:
        load_sweep(open_client(uri), spec.name, spec.tracking.experiment, with_trials=False)
    except (SweepNotFound, TrackingError) as exc:
        if isinstance(exc, TrackingError) and not str(exc).startswith("no MLflow store"):
            raise  # unreachable or refusing: its own message says so
        raise SpecError(f"cannot resume sweep {spec.name!r}: experiment {spec.tracking.experiment!r} at {uri} has "
                        f"no run of it; resume with the tracking URI it was started with (MLFLOW_TRACKING_URI)") from None
