"""Checkpoints that make resume exact, written atomically and verified on load.

Layout of a checkpoint directory:
  model.safetensors   weights (never pickled)                    } DDP and single-worker runs:
  optimizer.pt        AdamW state, loaded with weights_only=True } written by rank 0
  sharded/            FSDP runs instead: model and optimizer as torch.distributed.checkpoint
                      shards, each rank writing its own file straight to shared storage
  rng.pt              RNG states of every rank (torch, CUDA, numpy, python), weights_only-safe
  state.json          step, tokens seen, replay-mixer state, world size, run status
  MANIFEST.json       sha256 and size of every file above; written last

A checkpoint without a manifest, or whose files do not match it, is incomplete or
corrupt and is refused with `CheckpointError` naming the file. Each file is hashed once:
by the rank that wrote it when saving, and by one rank (files dealt round-robin) when a
run resumes, the ranks agreeing on the verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from trainers import distributed as dist_utils
from trainers.errors import UserError
from trainers.parallel import bare, is_sharded
from trainers.replay import ReplayState
from trainers.run_dir import BEST_MODEL_DIR, PARTIAL_SUFFIX, list_checkpoints

MANIFEST = "MANIFEST.json"
_FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")
SHARDED_DIR = "sharded"
_SHARDED_FILES = (f"{SHARDED_DIR}/.metadata", "rng.pt", "state.json")  # plus one shard file per rank


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


def capture_rng() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": np_state[2], "has_gauss": np_state[3], "gauss": np_state[4]},
        "python": _python_rng_to_tensor(random.getstate()),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_python_rng_from_tensor(state["python"]))


def _python_rng_to_tensor(state) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_rng_from_tensor(d):
    return d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"]


def _entry(path: Path) -> dict:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def _partial(directory: Path) -> Path:
    """Where a checkpoint is written before its rename."""
    return directory.with_name(directory.name + PARTIAL_SUFFIX)


def _fresh_partial(directory: Path) -> Path:
    tmp = _partial(directory)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, directory: Path, manifest: dict) -> Path:
    """Manifest last, then the rename: a directory without `.partial` is complete."""
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def save_checkpoint(directory: Path, model, optimizer, state: TrainState, rng_per_rank: list[dict]) -> Path:
    """Write a whole-model checkpoint into `directory` atomically (temp dir + rename, manifest
    last). Called by rank 0 only (DDP ranks hold identical weights)."""
    directory = Path(directory)
    tmp = _fresh_partial(directory)
    weights = {k: v.detach().contiguous().cpu() for k, v in bare(model).state_dict().items()}
    # Tied weights share storage; safetensors refuses shared tensors, so clone them.
    save_file({k: v.clone() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_per_rank, tmp / "rng.pt")
    (tmp / "state.json").write_text(state.model_dump_json(indent=2))
    return _finish(tmp, directory, {name: _entry(tmp / name) for name in _FILES})


def save_sharded_checkpoint(directory: Path, model, optimizer, state: TrainState, rng_per_rank: list[dict]) -> Path:
    """Write an FSDP checkpoint: called by every rank. Each rank writes its shards of weights and
    optimizer states straight into `directory` (shared storage: no local copy, no upload) and
    hashes its own file; rank 0 writes the rest, the manifest and renames."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = Path(directory)
    rank = dist.get_rank()
    tmp = _partial(directory)
    if rank == 0:
        _fresh_partial(directory)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDED_DIR))
    mine = {f"{SHARDED_DIR}/{p.name}": _entry(p) for p in sorted((tmp / SHARDED_DIR).glob(f"__{rank}_*"))}
    manifest = {k: v for part in dist_utils.gather_objects(mine) for k, v in part.items()}
    if rank == 0:
        torch.save(rng_per_rank, tmp / "rng.pt")
        (tmp / "state.json").write_text(state.model_dump_json(indent=2))
        for name in _SHARDED_FILES:
            manifest[name] = _entry(tmp / name)
        _finish(tmp, directory, manifest)
    dist.barrier()  # nobody goes on (or reports the checkpoint) before it is complete
    return directory


def is_sharded_checkpoint(directory: Path) -> bool:
    return (Path(directory) / SHARDED_DIR).is_dir()


def scratch_checkpoint_dir() -> Path:
    """A fresh temp location for a checkpoint that is dropped (benchmarks, tests)."""
    return Path(tempfile.mkdtemp(prefix="rewarm-ckpt-")) / "checkpoint"


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
    required = _SHARDED_FILES if is_sharded_checkpoint(directory) else _FILES
    for name in required:
        if name not in manifest:
            raise CheckpointError(f"checkpoint {directory}: missing {name}")
    rank, world = share
    for i, name in enumerate(sorted(manifest)):
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"checkpoint {directory}: missing {name}")
        hash_it = not quick and i % world == rank
        if path.stat().st_size != manifest[name]["bytes"] or (hash_it and _sha256(path) != manifest[name]["sha256"]):
            raise CheckpointError(f"checkpoint {directory}: {name} is corrupt or truncated (checksum mismatch)")


def newest_good_checkpoint(latest: Path | None, run_dir: Path | None,
                           quick: bool = False) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies (`latest` first, then the run dir's, newest first),
    and why each newer one was refused. (None, [...]) when none verifies. `quick`: see
    verify_checkpoint. Under torch.distributed every rank must call it (they share the hashing)."""
    candidates = [Path(latest)] if latest else []
    if run_dir is not None and run_dir.exists():
        # Ray names checkpoint directories by time, so names sort by age.
        candidates += list_checkpoints(run_dir)[::-1]
    # Every rank judges rank 0's list: listings of shared storage can differ between nodes for a
    # moment (an NFS cache after a crash), and ranks must pick the same checkpoint.
    candidates = dist_utils.gather_objects(candidates)[0]
    errors, seen = [], set()
    for candidate in candidates:
        if candidate.resolve() in seen:
            continue
        seen.add(candidate.resolve())
        error = None
        try:
            verify_checkpoint(candidate, quick=quick, share=dist_utils.rank_and_world())
        except CheckpointError as exc:
            error = str(exc)
        # Ranks hashed different files: one rank's mismatch refuses the candidate on all of them.
        refused = [e for e in dist_utils.gather_objects(error) if e]
        if refused:
            errors.append(refused[0])
            continue
        return candidate, errors
    return None, errors


def linkable_artifacts(run_dir: Path, latest: Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """What MLflow may link of an ended run: {"final": its newest checkpoint that passes the quick
    check, "best": its best model}, where they exist, and why newer checkpoints were passed over.

    A stop while the newest checkpoint was being copied leaves it partial; MLflow must link one
    that loads, so a checkpoint that fails its manifest is passed over.
    """
    artifacts = {}
    final, refused = newest_good_checkpoint(latest, run_dir, quick=True)
    if final is not None:
        artifacts["final"] = final
    if (run_dir / BEST_MODEL_DIR).exists():
        artifacts["best"] = run_dir / BEST_MODEL_DIR
    return artifacts, refused


def load_checkpoint(directory: Path, model, optimizer, rank: int, device: torch.device,
                    verified: bool = False) -> TrainState:
    """Verify (unless the caller just did), then restore model, optimizer and this rank's RNG
    in place; return the state. An FSDP checkpoint is read shard by shard into the sharded
    model; a whole-model one into the whole model."""
    directory = Path(directory)
    if not verified:
        verify_checkpoint(directory)
    state = TrainState.model_validate_json((directory / "state.json").read_text())
    world = dist_utils.rank_and_world()[1]
    if state.world_size is not None and state.world_size != world:
        raise CheckpointError(f"checkpoint {directory} was written by {state.world_size} workers and cannot resume on "
                              f"{world} (the data split and RNG streams are per worker); set "
                              f"resources.workers_per_trial: {state.world_size}, or start a new run")
    if is_sharded(model) != is_sharded_checkpoint(directory):
        kind = "sharded (fsdp)" if is_sharded_checkpoint(directory) else "whole-model (ddp)"
        raise CheckpointError(f"checkpoint {directory} is {kind}; resume with the resources.strategy that wrote it")
    if is_sharded(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        shards = {"model": model_state, "optimizer": optim_state}
        dcp.load(shards, checkpoint_id=str(directory / SHARDED_DIR))
        set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    else:
        weights = load_file(str(directory / "model.safetensors"), device=str(device))
        missing, unexpected = bare(model).load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not k.endswith("masked_bias") and not k.endswith(".bias_mask")]:
            raise CheckpointError(f"checkpoint {directory}: weights do not match the model "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        optimizer.load_state_dict(_load_tensors(directory / "optimizer.pt", device))
    rng = _load_tensors(directory / "rng.pt", None)
    restore_rng(rng[rank] if rank < len(rng) else rng[0])
    return state


def _load_tensors(path: Path, device) -> object:
    """torch.load restricted to tensors and plain containers: a checkpoint is never trusted to
    run code (a matching manifest proves integrity, not origin)."""
    import pickle

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} holds more than tensors; refusing to "
                              f"unpickle it ({first[:160]})") from None


def read_state(directory: Path) -> TrainState:
    verify_checkpoint(directory)
    return TrainState.model_validate_json((Path(directory) / "state.json").read_text())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
