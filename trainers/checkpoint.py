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
run resumes, the ranks agreeing on the verdict. The layout and the verification, which need
no torch, are trainers/checkpoint_files.py.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trainers import distributed as dist_utils
from trainers.checkpoint_files import (CHECKPOINT_FILES, SHARDED_DIR, SHARDED_FILES, CheckpointError, TrainState,
                                       checkpoint_candidates, file_entry, finish, is_sharded_checkpoint,
                                       verify_checkpoint)
from trainers.parallel import bare, is_sharded
from trainers.run_dir import PARTIAL_SUFFIX


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


def _partial(directory: Path) -> Path:
    """Where a checkpoint is written before its rename."""
    return directory.with_name(directory.name + PARTIAL_SUFFIX)


def _fresh_partial(directory: Path) -> Path:
    tmp = _partial(directory)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


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
    return finish(tmp, directory, {name: file_entry(tmp / name) for name in CHECKPOINT_FILES})


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
    mine = {f"{SHARDED_DIR}/{p.name}": file_entry(p) for p in sorted((tmp / SHARDED_DIR).glob(f"__{rank}_*"))}
    manifest = {k: v for part in dist_utils.gather_objects(mine) for k, v in part.items()}
    if rank == 0:
        torch.save(rng_per_rank, tmp / "rng.pt")
        (tmp / "state.json").write_text(state.model_dump_json(indent=2))
        for name in SHARDED_FILES:
            manifest[name] = file_entry(tmp / name)
        finish(tmp, directory, manifest)
    dist.barrier()  # nobody goes on (or reports the checkpoint) before it is complete
    return directory


def scratch_checkpoint_dir() -> Path:
    """A fresh temp location for a checkpoint that is dropped (benchmarks, tests)."""
    return Path(tempfile.mkdtemp(prefix="rewarm-ckpt-")) / "checkpoint"


def newest_good_checkpoint(latest: Path | None, run_dir: Path | None,
                           quick: bool = False) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies (`latest` first, then the run dir's, newest first),
    and why each newer one was refused. (None, [...]) when none verifies. `quick`: see
    verify_checkpoint. Under torch.distributed every rank must call it (they share the hashing);
    the sweep driver, which is no rank, uses checkpoint_files.linkable_artifacts."""
    # Every rank judges rank 0's list: listings of shared storage can differ between nodes for a
    # moment (an NFS cache after a crash), and ranks must pick the same checkpoint.
    candidates = dist_utils.gather_objects(checkpoint_candidates(latest, run_dir))[0]
    errors = []
    for candidate in candidates:
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
