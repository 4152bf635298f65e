"""Tune's experiment-state save must not race its own upload of that state.

Ray Tune (2.60) writes the experiment state (trial table, searcher and callback pickles, each
through a tmp file and a rename) into a local staging dir, then uploads the dir to
`storage_path` in a background thread. Rewarm saves at every controller step
(TUNE_GLOBAL_CHECKPOINT_S=0, see ray_cluster.py), so the next save can start while the last
upload is still listing and copying the dir. The upload then trips over a tmp file that was
renamed away, prints a traceback (seen in CI), and leaves storage with a mix of old and new
state files until the next upload; a driver killed in that window would resume from the mix.

`serialize_state_uploads()` makes every save wait for the upload in flight, so saves and
uploads alternate. Uploading a few KB of state takes milliseconds, so the controller barely
waits. Ray's own code is unchanged otherwise; if a Ray upgrade renames the class, the patch
is skipped with a warning and the test in tests/test_tune_state.py fails to say so.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_MARK = "_rewarm_serialized_uploads"


def serialize_state_uploads() -> bool:
    """Install the wait-before-save wrapper once per process. Returns whether it is active."""
    try:
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager
    except ImportError:  # pragma: no cover - only on a Ray that moved the class
        log.warning("Ray Tune moved _ExperimentCheckpointManager; state saves may race uploads")
        return False
    if getattr(manager, _MARK, False):
        return True
    original = manager.sync_up_experiment_state

    def sync_up_experiment_state(self, save_fn, force: bool = False, wait: bool = False):
        def save_after_upload():
            finish_upload_in_flight(self._storage.syncer)
            save_fn()

        return original(self, save_fn=save_after_upload, force=force, wait=wait)

    manager.sync_up_experiment_state = sync_up_experiment_state
    setattr(manager, _MARK, True)
    return True


def finish_upload_in_flight(syncer) -> None:
    """Wait for the syncer's running upload. A failed one is only noted: the upload that
    follows this save copies the whole dir again, which is what Tune itself relies on."""
    try:
        syncer.wait()
    except Exception as exc:  # noqa: BLE001 - any upload error; the next upload retries it
        log.warning("an upload of the sweep's Tune state failed (%s: %s); retrying with the next save",
                    type(exc).__name__, exc)
