"""Drive Tune's real experiment-state manager the way a sweep does: save, upload, save, ...

Run as `python -m tests.tune_state_race {patched,unpatched}`; prints a JSON line with the
warnings Ray logged and whether storage ended with the last saved state. A subprocess per
mode, because the patch changes Ray's class for the whole process.
"""

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from ray.train._internal.storage import StorageContext
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from trainers.ray_compat import UPLOAD_STAGING_PREFIX, finish_upload_in_flight

SAVES = 300
STATE_FILES = ("experiment_state.json", "searcher-state.pkl", "callbacks.pkl")


def main(mode: str) -> dict:
    if mode == "patched":
        from trainers.ray_compat import atomic_state_uploads, serialize_state_uploads

        assert serialize_state_uploads(), "trainers/ray_compat.py could not install its wrapper on this Ray"
        assert atomic_state_uploads(), "trainers/ray_compat.py could not install its uploader on this Ray"
    root = Path(tempfile.mkdtemp())
    staging = root / "staging"

    class LocalStaging(StorageContext):
        # The real context puts staging under the Ray session dir; no Ray session is needed here.
        @property
        def experiment_driver_staging_path(self):
            return str(staging)

    storage = LocalStaging(str(root / "storage"), "exp")
    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage().splitlines()[0])

    logging.getLogger("ray").addHandler(Collect())
    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period=0)  # TUNE_GLOBAL_CHECKPOINT_S=0
    generation = [0]
    filler = os.urandom(1 << 20)  # a searcher pickle of a large sweep; made once, so saves come fast

    def save():  # what TuneController.save_to_dir does: each file written to a tmp name, then renamed
        generation[0] += 1
        staging.mkdir(exist_ok=True)
        body = str(generation[0]).encode() + filler
        for name in STATE_FILES:
            tmp = staging / f".{os.getpid()}-tmp-{name}"
            tmp.write_bytes(body)
            tmp.rename(staging / name)

    for _ in range(SAVES):
        manager.sync_up_experiment_state(save)
    stored = Path(storage.experiment_fs_path)
    # Unpatched, the race may have failed this upload: noted, and the final save uploads again.
    finish_upload_in_flight(storage.syncer)
    inodes = {n: (stored / n).stat().st_ino for n in STATE_FILES if (stored / n).exists()}
    manager.sync_up_experiment_state(save, force=True, wait=True)
    last = str(generation[0]).encode()
    return {"warnings": warnings,
            "storage_has_last_state": all((stored / n).read_bytes().startswith(last) for n in STATE_FILES),
            # The last upload renamed new files in (trainers/ray_compat.atomic_state_uploads), or
            # rewrote the old ones in place (Ray's own copy).
            "files_replaced_whole": bool(inodes) and all((stored / n).stat().st_ino != i for n, i in inodes.items()),
            # Save-time tmp files, or an upload's own staging dir (trainers/ray_compat.py), left behind.
            "stray_tmp_files": sorted(p.name for p in stored.iterdir() if "-tmp-" in p.name or p.name.startswith(UPLOAD_STAGING_PREFIX))}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
