"""Every use of Ray beyond its public API, in one place (Ray 2.60, Train V2).

Each name here is something Rewarm relies on that Ray does not promise to keep: an
environment variable Ray reads, a naming scheme, a private class or attribute. Each has a
canary in `tests/test_ray_compat.py` that fails, naming the item, on a Ray that moved it;
`pyproject.toml` caps Ray below the next minor version for the same reason. Upgrading Ray
means running those canaries and fixing what they name here, nowhere else.

It sits in `trainers/` (the bottom layer) because both sides need it: workers name
checkpoints as Ray Train does and record Ray settings; the sweep driver patches Tune.
Ray itself is imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- environment variables

# Ray Train V2 polls workers at this interval, and a worker's report blocks until polled
# (ray/train/v2/_internal/constants.py: HEALTH_CHECK_INTERVAL_S_ENV_VAR).
TRAIN_HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_V2_ENABLED_ENV = "RAY_TRAIN_V2_ENABLED"  # (same file: V2_ENABLED_ENV_VAR)
# Whether each Train run's controller starts a PreemptionWatcher actor (one more process per
# worker-group start) that tells node preemptions from other failures (same file:
# ENABLE_PREEMPTION_WATCHER_ENV_VAR).
TRAIN_PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Seconds between Tune's experiment-state saves (ray/tune/execution/tune_controller.py).
TUNE_STATE_SAVE_PERIOD_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
TUNE_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # Tune's console reporter (ray/tune/experimental/output.py)
# "1": Tune adds no CSV, JSON and TensorBoard loggers of its own to a run
# (ray/tune/utils/callback.py: _create_default_callbacks).
TUNE_AUTO_LOGGERS_OFF_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
# Results Tune buffers per trial before the scheduler sees them (ray/tune/tune.py); the
# sweep-efficiency benchmark sets 1, so a fast replayed trial cannot run past a stop decision.
TUNE_RESULT_BUFFER_LENGTH_ENV = "TUNE_RESULT_BUFFER_LENGTH"
# Set by Ray in the entrypoint of a `ray job submit`: the job's own runtime_env as JSON
# (ray/_private/runtime_env/constants.py: RAY_JOB_CONFIG_JSON_ENV_VAR).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# The State API server Ray's clients use before guessing one (ray/_private/ray_constants.py).
API_SERVER_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"


def submitted_job_env_vars() -> dict[str, str]:
    """The env_vars of the runtime_env of the `ray job submit` this process runs in ({} otherwise)."""
    if JOB_CONFIG_ENV not in os.environ:
        return {}
    return (json.loads(os.environ[JOB_CONFIG_ENV]).get("runtime_env") or {}).get("env_vars") or {}


# ---------------------------------------------------------------------- Ray Train checkpoints

CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train V2 names a run's checkpoint dirs checkpoint_<local time>


def checkpoint_dir_name() -> str:
    """A new checkpoint directory name, exactly as Ray Train V2 makes them (names sort by age),
    so that runs trained without a worker group leave the same layout as Train runs."""
    from ray.train.v2._internal.execution.storage import StorageContext

    return StorageContext.make_default_checkpoint_dir_name()


# ---------------------------------------------------------------------- Ray Train start-up


def without_idle_dataset_manager(trainer):
    """Keep a Train run without Ray Datasets from starting a DatasetManager actor.

    Ray Train 2.60 adds its DatasetsCallback to every run, and the callback starts a
    DatasetManager actor at each worker-group start even when the run has no datasets: one
    more Python process (~1.5 s of CPU) that nothing calls. Rewarm's workers read their own
    data (trainers/data.py), so the callback is dropped when `trainer.datasets` is empty.
    Returns the trainer (unchanged where Ray moved the method or the class).
    """
    try:
        from ray.train.v2._internal.callbacks import DatasetsCallback
    except ImportError:
        log.warning("Ray Train moved DatasetsCallback; each Train run starts an idle DatasetManager")
        return trainer
    if trainer.datasets or not hasattr(trainer, "_create_default_callbacks"):
        return trainer
    defaults = trainer._create_default_callbacks

    def create_default_callbacks():
        return [cb for cb in defaults() if not isinstance(cb, DatasetsCallback)]

    trainer._create_default_callbacks = create_default_callbacks
    return trainer


def wait_for_reports_collected(timeout_s: float = 30.0) -> bool:
    """In a Ray Train worker, before the training function returns: wait until the controller
    has taken every report this worker made. True once they are taken (or outside a Train
    worker); False when it gave up, with a warning, a report still uncollected.

    Ray Train 2.60's worker `poll_status` reads the worker's report queue, then whether the
    training thread still runs. A report put, and the thread ended, between those two reads
    is never collected: the worker counts as finished with its report in the queue. A trial
    whose last report comes right before its end (a run that diverges at its second step)
    then reaches Tune with no result at all, and Tune's metric check stops the whole sweep
    (seen once in CI, 2026-12-04). While the thread waits here, the poll that takes the
    report sees it running, so the report is handed on.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context
    except ImportError:
        log.warning("Ray Train moved its workers' report queue; a report made as a run ends may be lost")
        return False
    try:
        reports = get_train_context().get_result_queue()
    except RuntimeError:  # not in a Train worker: nothing reported through Train
        return True
    deadline = time.monotonic() + timeout_s
    while not reports.empty():
        if time.monotonic() >= deadline:
            log.warning("Ray Train did not collect this worker's last report within %.0f s; it may be lost", timeout_s)
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------- errors of Ray tasks


def unwrap_task_error(exc: BaseException) -> BaseException | None:
    """The exception a failed Ray task raised, from the RayTaskError the caller got (else None)."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    return None


# ---------------------------------------------------------------------- Tune internals


def restored_callbacks(tuner) -> list | None:
    """The callbacks a restored Tuner will call (unpickled from the sweep's run config).

    Ray has no public accessor; None where the private one moved (the caller then goes on
    without them and says nothing is lost: MLflow's own records close the sweep).
    """
    try:
        return list(tuner._local_tuner.get_run_config().callbacks or [])
    except AttributeError:
        return None


def optuna_search_state(searcher) -> tuple[dict, set, object]:
    """What Ray's OptunaSearch keeps per sweep: Tune trial id -> Optuna trial, the ids it has
    told Optuna about, and the Optuna study. Private attributes (ray/tune/search/optuna)."""
    return searcher._ot_trials, searcher._completed_trials, searcher._ot_study


# Logs a WARNING at every ray.init that token authentication is on (it is, by default, and
# should stay on): a notice, not a problem (ray/_private/authentication/).
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_NOTICE_FILTER_MARK = "_rewarm_notice_filter"


def drop_driver_notices(patterns: tuple[str, ...]) -> bool:
    """Keep messages the raylet pushes to the driver's terminal out of it when they contain
    one of `patterns` (anything else, errors included, still prints).

    Ray prints them from a thread of its own (ray/_private/worker.py: listen_error_messages ->
    print_to_stdstream) with raw ANSI colour codes, e.g. the raylet's "N PYTHON worker processes
    have been started" notice, which a 2-core machine starting trial processes triggers.
    Returns whether the filter is installed (False where Ray moved the function).
    """
    import ray._private.worker as worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        return False
    if getattr(original, _NOTICE_FILTER_MARK, False):
        return True

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet" and any(p in line for line in data.get("lines", []) for p in patterns):
            return None
        return original(data, *args, **kwargs)

    setattr(print_to_stdstream, _NOTICE_FILTER_MARK, True)
    worker.print_to_stdstream = print_to_stdstream
    return True


# Tune names each save's trial table experiment_state-<session stamp>.json
# (ray/tune/execution/tune_controller.py: TuneController.CKPT_FILE_TMPL); the searcher's and
# callbacks' files of that save carry the same stamp.
TUNE_STATE_PREFIX = "experiment_state-"

_ATOMIC_UPLOADS_MARK = "_rewarm_atomic_uploads"
# Beside the sweep's state files in storage_path while an upload is in flight (hidden: Tune
# and Rewarm read only the named files there); left behind only by a driver killed mid-upload,
# and removed by the next upload.
UPLOAD_STAGING_PREFIX = ".rewarm-upload-"


def atomic_state_uploads() -> bool:
    """Make each upload of Tune's experiment state to a local (or mounted) storage_path replace
    the files there whole, never write them in place.

    Tune 2.60 uploads its staged state dir with pyarrow's copy_files, which truncates each file
    in storage_path and then writes it. A driver killed in between (Rewarm saves at every
    controller step, so uploads run much of the time) leaves empty state files where the last
    good state was; `Tuner.restore` then starts the experiment afresh: seen in CI on
    2026-12-07, a resumed sweep ran its one trial again from step 0 under a new id. Here the
    dir is copied beside the state files first and each file is renamed into place (atomic on
    one filesystem), the trial table last. Object stores are left to Tune: an object is never
    visible half-written. Installed once per process; returns whether it is active (False,
    with a warning, on a Ray that moved the syncer).
    """
    try:
        import pyarrow.fs
        from ray.train._internal.storage import _FilesystemSyncer as syncer
    except ImportError:
        log.warning("Ray moved _FilesystemSyncer; a driver killed while saving may leave Tune's state empty")
        return False

    def atomic(original):
        def _sync_up_command(self, local_path: str, uri: str, exclude=None):
            command = original(self, local_path, uri, exclude)
            if exclude or not os.path.isdir(local_path) or not isinstance(self.storage_filesystem,
                                                                          pyarrow.fs.LocalFileSystem):
                return command
            return replace_dir_files, dict(source=local_path, destination=uri)
        return _sync_up_command

    return _wrap_once(syncer, "_sync_up_command", _ATOMIC_UPLOADS_MARK, atomic)


def replace_dir_files(source: str, destination: str) -> None:
    """Copy every file under `source` to the same place under `destination`, each replacing the
    old one by a rename, so that a process killed at any point leaves each file old or new,
    never empty or half-written. Tune's trial table (experiment_state-*.json) goes last. No
    fsync: this guards against a killed process, not a lost machine."""
    import shutil
    import uuid

    os.makedirs(destination, exist_ok=True)
    for stale in os.listdir(destination):  # a killed upload's leftovers
        if stale.startswith(UPLOAD_STAGING_PREFIX):
            shutil.rmtree(os.path.join(destination, stale), ignore_errors=True)
    staging = os.path.join(destination, f"{UPLOAD_STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    shutil.copytree(source, staging)
    files = [os.path.relpath(os.path.join(root, name), staging) for root, _, names in os.walk(staging) for name in names]
    # Nested files (trial dirs' logs) first, then the save's top-level files one straight after
    # another (searcher, callbacks), the trial table last: a kill leaves at most a few
    # renames between one save and the next.
    for rel in sorted(files, key=lambda f: (os.sep not in f, f.startswith(TUNE_STATE_PREFIX), f)):
        target = os.path.join(destination, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(staging, rel), target)
    shutil.rmtree(staging, ignore_errors=True)


_UPLOADS_MARK = "_rewarm_serialized_uploads"


def serialize_state_uploads() -> bool:
    """Make each of Tune's experiment-state saves wait for the upload of the previous one.

    Ray Tune 2.60 writes the experiment state (trial table, searcher and callback pickles, each
    through a tmp file and a rename) into a local staging dir, then uploads the dir to
    `storage_path` in a background thread. Rewarm saves at every controller step
    (TUNE_GLOBAL_CHECKPOINT_S=0, sweeps/settings.py), so the next save could start while the
    last upload still lists and copies the dir: the upload then trips over a tmp file renamed
    away, prints a traceback (seen in CI), and leaves storage with a mix of old and new state
    files, which a driver killed in that window would resume from. Uploading a few KB takes
    milliseconds, so the controller barely waits. Installed once per process; returns whether
    it is active (False, with a warning, on a Ray that moved the class).
    """
    try:
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager
    except ImportError:
        log.warning("Ray Tune moved _ExperimentCheckpointManager; state saves may race uploads")
        return False

    def serialized(original):
        def sync_up_experiment_state(self, save_fn, force: bool = False, wait: bool = False):
            def save_after_upload():
                finish_upload_in_flight(self._storage.syncer)
                save_fn()

            return original(self, save_fn=save_after_upload, force=force, wait=wait)
        return sync_up_experiment_state

    return _wrap_once(manager, "sync_up_experiment_state", _UPLOADS_MARK, serialized)


def _wrap_once(owner, name: str, mark: str, wrap) -> bool:
    """Replace `owner.name` by `wrap(owner.name)`, once per process (`mark` on `owner` says it
    is done): the wrappers of Ray's classes above patch the class for every instance."""
    if not getattr(owner, mark, False):
        setattr(owner, name, wrap(getattr(owner, name)))
        setattr(owner, mark, True)
    return True


def finish_upload_in_flight(syncer) -> None:
    """Wait for the syncer's running upload. A failed one is only noted: the upload that
    follows this save copies the whole dir again, which is what Tune itself relies on."""
    try:
        syncer.wait()
    except Exception as exc:  # noqa: BLE001 - any upload error; the next upload retries it
        log.warning("an upload of the sweep's Tune state failed (%s: %s); retrying with the next save",
                    type(exc).__name__, exc)
