"""The on-disk layout of a sweep directory (`<storage_path>/<sweep name>`).

    spec.yaml            the validated spec the sweep was started with (`rewarm resume` reads it)
    trials/<trial id>/   each trial's run dir (trainers/run_dir.py)
    stopper_state.pkl    the schedule-aware stopper's state (Tune does not checkpoint schedulers)
    driver_timings.json  the driver's per-trial timestamps and MLflow time (overhead benchmark)
    (../optuna.db)       the sweeps' Optuna studies, in the storage path, only when MLflow is an
                         HTTP server and tracking.study_storage is unset (sweeps/tracking/study.py)
    ...                  and Tune's own experiment state, which only Tune reads (Tuner.can_restore)
"""

from __future__ import annotations

from pathlib import Path

from trainers.errors import UserError

SPEC_FILE = "spec.yaml"
TRIALS_DIR = "trials"
STOPPER_STATE_FILE = "stopper_state.pkl"
DRIVER_TIMINGS_FILE = "driver_timings.json"
DEFAULT_STORAGE_PATH = "rewarm_runs"


class StateIncompatible(UserError):
    """A sweep's saved Tune or stopper state names classes this version of Rewarm does not have
    (no release promises to read another version's pickles; MLflow keeps the results)."""


def sweep_dir(storage_dir: str | Path, name: str) -> Path:
    return Path(storage_dir) / name


def trials_dir(sweep: Path) -> Path:
    return Path(sweep) / TRIALS_DIR
