"""Thin helpers so the one training loop runs with or without torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def all_reduce_sum(t: torch.Tensor) -> None:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_mean(t: torch.Tensor) -> None:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()


def gather_objects(obj) -> list:
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
