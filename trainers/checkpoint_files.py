"""What a checkpoint directory holds and whether it is intact; no tensors, no torch.

Layout and verification are trainers/checkpoint.py's contract (it writes and loads the
tensors); they live here so the sweep driver, which checks checkpoints before it links them
in MLflow and never loads one, does not import torch (~1.3 s a command on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from trainers.errors import UserError
from trainers.replay import ReplayState
from trainers.run_dir import BEST_MODEL_DIR, list_checkpoints

MANIFEST = "MANIFEST.json"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")
SHARDED_DIR = "sharded"
SHARDED_FILES = (f"{SHARDED_DIR}/.metadata", "rng.pt", "state.json")  # plus one shard file per rank


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from (corrupt, incomplete, another run's); names the directory."""


class TrainState(BaseModel):
    """Everything besides tensors needed to continue a run where it stopped."""

    model_config = ConfigDict(extra="forbid")

    step: int  # optimizer steps completed; the next step to run has this index
    tokens_seen: int
    replay: ReplayState
    first_loss: float | None = None  # divergence detection compares against this
    loss_ema: float | None = None
    best_objective: float | None = None
    config_fingerprint: str = ""  # a checkpoint only resumes the run configuration that wrote it
    world_size: int | None = None  # workers that wrote it (None: before this was recorded)
    stream_positions: list[dict] = []  # per rank: where each streamed domain's next block starts


def file_entry(path: Path) -> dict:
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def finish(tmp: Path, directory: Path, manifest: dict) -> Path:
    """Manifest last, then the rename: a directory without `.partial` is complete."""
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def is_sharded_checkpoint(directory: Path) -> bool:
    return (Path(directory) / SHARDED_DIR).is_dir()


def verify_checkpoint(directory: Path, quick: bool = False, share: tuple[int, int] = (0, 1)) -> None:
    """Raise CheckpointError unless every file is there with its manifest's size and checksum.
    `quick` checks sizes only: what the sweep driver does before linking a checkpoint (hashing
    a 7B model's 100 GB in the driver would stall every trial's events for minutes); a resume
    always checks the checksums. `share` = (rank, world): this rank hashes every world-th file
    (sizes are checked for all), so a resume hashes each file once over the ranks."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"checkpoint {directory}: no {MANIFEST} (incomplete write or not a Rewarm checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is corrupt ({exc})") from exc
    required = SHARDED_FILES if is_sharded_checkpoint(directory) else CHECKPOINT_FILES
    for name in required:
        if name not in manifest:
            raise CheckpointError(f"checkpoint {directory}: missing {name}")
    rank, world = share
    for i, name in enumerate(sorted(manifest)):
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"checkpoint {directory}: missing {name}")
        hash_it = not quick and i % world == rank
        if path.stat().st_size != manifest[name]["bytes"] or (hash_it and sha256(path) != manifest[name]["sha256"]):
            raise CheckpointError(f"checkpoint {directory}: {name} is corrupt or truncated (checksum mismatch)")


def checkpoint_candidates(latest: Path | None, run_dir: Path | None) -> list[Path]:
    """Where a run may resume from, in the order to try: `latest` (what Ray hands back) first,
    then the run dir's checkpoints, newest first; each directory once."""
    candidates = [Path(latest)] if latest else []
    if run_dir is not None and run_dir.exists():
        # Ray names checkpoint directories by time, so names sort by age.
        candidates += list_checkpoints(run_dir)[::-1]
    out, seen = [], set()
    for candidate in candidates:
        if candidate.resolve() not in seen:
            seen.add(candidate.resolve())
            out.append(candidate)
    return out


def linkable_artifacts(run_dir: Path, latest: Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """What MLflow may link of an ended run: {"final": its newest checkpoint that passes the quick
    check, "best": its best model}, where they exist, and why newer checkpoints were passed over.

    A stop while the newest checkpoint was being copied leaves it partial; MLflow must link one
    that loads, so a checkpoint that fails its manifest is passed over.
    """
    artifacts, refused = {}, []
    for candidate in checkpoint_candidates(latest, run_dir):
        try:
            verify_checkpoint(candidate, quick=True)
        except CheckpointError as exc:
            refused.append(str(exc))
            continue
        artifacts["final"] = candidate
        break
    if (run_dir / BEST_MODEL_DIR).exists():
        artifacts["best"] = run_dir / BEST_MODEL_DIR
    return artifacts, refused


def read_state(directory: Path) -> TrainState:
    verify_checkpoint(directory)
    return TrainState.model_validate_json((Path(directory) / "state.json").read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
