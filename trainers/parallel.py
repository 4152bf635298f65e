"""How a trial's model is laid out on its workers: DDP or FSDP2, and in which precision.

- **ddp**: every rank holds the whole model and optimizer; gradients are all-reduced. Right
  for models whose fp32 weights plus AdamW states (~16 bytes per parameter) fit one device.
- **fsdp**: `torch.distributed.fsdp.fully_shard` (FSDP2) on every transformer block and the
  root: each rank holds 1/world of the weights, gradients and optimizer states. Ranks build
  the model on the meta device and each reads only its own rows of every weight from the
  memory-mapped safetensors files. Where transformers does more than rename keys while
  loading (merged or split tensors), or the weights are not in safetensors, rank 0 alone
  loads the model (into CPU memory, in its storage dtype) and each parameter is broadcast
  and sharded in turn (FSDP2's `broadcast_from_rank0`, as torchtitan and Accelerate's
  `cpu_ram_efficient_loading` do).

Precision is one word (`precision_plan` is the pure table of what it means): master weights
and optimizer states stay fp32 unless `bf16-pure` is asked for by name, because bf16 weights
drop updates smaller than 2^-8 of a weight (the end of a cosine decay). `model.dtype` is only
the storage dtype of what is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers import distributed as dist_utils
from trainers import hf_compat
from trainers.errors import UserError
from trainers.parallel_config import Init, ParallelConfig, Precision

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PrecisionPlan:
    master: torch.dtype  # weights the optimizer updates, and its states
    compute: torch.dtype | None  # bf16 for forward/backward; None: compute in the master dtype
    reduce: torch.dtype  # gradient reduction between ranks


def precision_plan(precision: Precision, device_type: str) -> PrecisionPlan:
    """The dtypes a precision name means on a device (pure; tested against a literal table).
    `auto` keeps CPU runs in fp32: CPU bf16 autocast is slower than fp32 on most CPUs."""
    if precision == "auto":
        precision = "bf16-mixed" if device_type == "cuda" else "fp32"
    if precision == "fp32":
        return PrecisionPlan(torch.float32, None, torch.float32)
    if precision == "bf16-mixed":
        return PrecisionPlan(torch.float32, torch.bfloat16, torch.float32)
    return PrecisionPlan(torch.bfloat16, None, torch.bfloat16)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def bare(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its DDP wrapper (FSDP2 does not wrap)."""
    return model.module if hasattr(model, "module") else model


class ModelError(UserError, ValueError):
    """The model cannot be laid out as asked (e.g. sharded); the message says what to set instead."""


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, by the class names transformers marks as not to be split
    (`_no_split_modules`): the natural FSDP units of any Hugging Face causal LM."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ModelError(f"{type(model).__name__}: no transformer blocks found to shard (its _no_split_modules "
                         f"is {sorted(names)}); use resources.strategy: ddp")
    return blocks


def load_weights(model_path: str, storage_dtype: str, init: Init = "pretrained", seed: int = 0) -> torch.nn.Module:
    """The model as stored, through transformers' own loading (key renames, tied weights); or,
    with `init="random"`, the same architecture freshly initialised from `seed` (training from
    scratch), without touching the global RNG."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per worker per trial drowns the sweep's own output
    dtype = STORAGE_DTYPES[storage_dtype]
    if init == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)


def build_model(model_path: str, storage_dtype: str, parallel: ParallelConfig,
                device: torch.device, init: Init = "pretrained", seed: int = 0) -> torch.nn.Module:
    """The model ready to train on this rank: loaded (or initialised, see `load_weights`), in its
    master dtype, on `device`, and wrapped for the strategy when there are several ranks."""
    plan = precision_plan(parallel.precision, device.type)
    if parallel.strategy == "fsdp":
        return _fsdp_model(model_path, storage_dtype, parallel, plan, device, init, seed)
    model = load_weights(model_path, storage_dtype, init, seed).to(dtype=plan.master)
    if parallel.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = model.to(device)
    if dist_utils.active() and dist_utils.rank_and_world()[1] > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _fsdp_model(model_path: str, storage_dtype: str, parallel: ParallelConfig, plan: PrecisionPlan,
                device: torch.device, init: Init, seed: int) -> torch.nn.Module:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    rank, world = dist_utils.rank_and_world()
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=plan.master)
    own_shards = _own_shard_plan(model, model_path) if init == "pretrained" else None
    if parallel.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=plan.compute or plan.master, reduce_dtype=plan.reduce)
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=device)
    # Non-persistent buffers (rotary frequencies) are in no checkpoint: every rank computes them.
    hf_compat.init_non_persistent_buffers(model)
    if own_shards is not None:
        _load_own_shards(model, *own_shards, rank, world)
        model._rewarm_loaded_by = "own shards"
        return model
    model._rewarm_loaded_by = "rank 0 broadcast"
    full = {}
    if rank == 0:
        # In the storage dtype; each shard is cast as it is copied in.
        full = load_weights(model_path, storage_dtype, init, seed).state_dict()
    # Parameters and persistent buffers: broadcast one at a time, each rank keeping its shard.
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def _own_shard_plan(model, model_path: str):
    """(key map, file index) when each rank can read its own rows of every weight from the
    safetensors files (transformers only renames this model's keys, and every key is in the
    files); None otherwise (tensor conversions, tied weights absent from the files, .bin)."""
    key_map = hf_compat.checkpoint_key_map(model)
    files = hf_compat.safetensors_index(model_path) if key_map is not None else None
    if files is None or any(key not in files for key in key_map.values()):
        return None
    return key_map, files


@torch.no_grad()
def _load_own_shards(model, key_map: dict[str, str], files: dict, rank: int, world: int) -> None:
    """Each rank reads only its rows of each weight (FSDP2 shards dim 0 as torch.chunk does) from
    the memory-mapped safetensors files, cast into its fp32 (or bf16) shard."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, Shard

    state = model.state_dict()  # sharded DTensors sharing the parameters' storage
    by_file: dict = {}
    for key in state:
        by_file.setdefault(files[key_map[key]], []).append(key)
    for path, keys in by_file.items():
        with safe_open(str(path), "pt", device="cpu") as f:
            for key in keys:
                target, rows = state[key], f.get_slice(key_map[key])
                if not isinstance(target, DTensor):
                    target.copy_(rows[:])
                    continue
                if tuple(target.placements) != (Shard(0),):
                    raise ModelError(f"{key}: sharded as {target.placements}, expected Shard(0)")
                n = target.shape[0]
                chunk = -(-n // world)
                start, stop = min(rank * chunk, n), min((rank + 1) * chunk, n)
                if stop > start:
                    target.to_local()[:stop - start].copy_(rows[start:stop])
