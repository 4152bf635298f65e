"""Held-out loss: mean per-token cross-entropy (nats) over fixed validation blocks, in bounded memory.

Full logits are [batch, seq, vocab]: 32 x 2048 x 50k in fp32 is over 13 GB. So the model is
run for its final hidden states only (`logits_to_keep=1`, with a hook on the decoder), and
the output head is applied to at most `LOGIT_CHUNK_ELEMENTS` logits at a time, each chunk's
cross-entropy summed in fp32. Under FSDP every rank runs the same number of forward passes
(a rank short of blocks runs a discarded one): each forward all-gathers weights collectively.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from trainers import distributed as dist_utils
from trainers.parallel import bare, is_sharded

LOGIT_CHUNK_ELEMENTS = 1 << 26  # fp32 logits per chunk: 256 MiB


def autocast(device: torch.device, compute_dtype: torch.dtype | None):
    """bf16 autocast when the run computes in bf16; no context at all otherwise (it is not free)."""
    if compute_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype)


@contextlib.contextmanager
def evaluating(model):
    """The model to call for evaluation, in eval mode: the bare module under DDP (a DDP forward
    syncs buffers across ranks, and ranks may evaluate different numbers of blocks), and under
    FSDP the root's own weights (embeddings, head) gathered once for the whole evaluation."""
    net = bare(model)
    was_training = net.training
    net.eval()
    sharded = is_sharded(net)
    if sharded:
        net.unshard()
    try:
        yield net
    finally:
        if sharded:
            net.reshard()
        if was_training:
            net.train()


def _forward(net, ids: torch.Tensor, device: torch.device, compute_dtype: torch.dtype | None):
    """(final hidden states [B, T, H], output head, None) of a Hugging Face causal LM whose head
    alone gives its logits, computing logits for one position only; (None, None, full logits
    [B, T, V]) for any other model."""
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    decoder = getattr(net, "base_model", None)
    if head is None or decoder is None or decoder is net or getattr(net, "_rewarm_head_is_logits", True) is False:
        with autocast(device, compute_dtype):
            return None, None, net(input_ids=ids).logits
    captured = {}
    handle = decoder.register_forward_hook(lambda module, args, out: captured.__setitem__("h", out[0]))
    try:
        with autocast(device, compute_dtype):
            try:
                last = net(input_ids=ids, logits_to_keep=1).logits
            except TypeError:  # a model without `logits_to_keep`: full logits once, hidden states still used
                last = net(input_ids=ids).logits[:, -1:]
    finally:
        handle.remove()
    hidden = captured["h"]
    if not _head_is_the_logits(net, head, hidden, last, device, compute_dtype):
        return _forward(net, ids, device, compute_dtype)  # the model does more after its head
    return hidden, head, None


def _head_is_the_logits(net, head, hidden, last, device, compute_dtype) -> bool:
    """Whether the output head alone gives the model's logits, checked once per model on the last
    position: some models scale or soft-cap logits after the head (Gemma 2/3's
    final_logit_softcapping, Cohere's logit_scale, Granite's logits_scaling), and their losses
    must come from their own logits."""
    verdict = getattr(net, "_rewarm_head_is_logits", None)
    if verdict is None:
        with autocast(device, compute_dtype):
            mine = head(hidden[:, -1:]).float()
        verdict = bool(torch.allclose(mine, last.float(), rtol=1e-3, atol=1e-3))
        if is_sharded(net):  # every rank must take the same path: each forward is collective
            verdict = all(dist_utils.gather_objects(verdict))
        net._rewarm_head_is_logits = verdict
    return verdict


def selected_logits(net, ids: torch.Tensor, select, device: torch.device, compute_dtype: torch.dtype | None):
    """Yield (start, fp32 logits [n, V]) for the positions `select` picks from a [B, T, ...]
    tensor (as a flat [N, ...]), at most LOGIT_CHUNK_ELEMENTS logits at a time where the
    model's head can be applied on its own."""
    hidden, head, logits = _forward(net, ids, device, compute_dtype)
    if logits is not None:
        yield 0, select(logits).float()
        return
    picked = select(hidden)
    step = max(1, LOGIT_CHUNK_ELEMENTS // head.weight.shape[0])
    for start in range(0, picked.shape[0], step):
        with autocast(device, compute_dtype):
            chunk = head(picked[start:start + step])
        yield start, chunk.float()


def next_token_loss_sum(net, ids: torch.Tensor, device: torch.device, compute_dtype: torch.dtype | None) -> torch.Tensor:
    """Summed next-token cross-entropy (fp64 scalar) of `ids` [B, T]."""
    targets = ids[:, 1:].reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start, logits in selected_logits(net, ids, lambda t: t[:, :-1].reshape(-1, t.size(-1)), device, compute_dtype):
        total += F.cross_entropy(logits, targets[start:start + logits.shape[0]], reduction="sum").double()
    return total


def forward_rounds(n_items: int, per_round: int, sharded: bool) -> int:
    """How many evaluation forward passes this rank makes over its `n_items`: under FSDP every
    rank makes as many as the rank with the most (each pass is collective)."""
    mine = math.ceil(n_items / per_round)
    if not sharded:
        return mine
    counts = dist_utils.gather_objects(mine)
    return max(counts)


@torch.no_grad()
def validation_loss(model, blocks: np.ndarray, batch_size: int, device: torch.device,
                    compute_dtype: torch.dtype | None = None) -> float:
    """Mean next-token loss over `blocks` [N, L]; ranks split the blocks and sum.

    Summing token losses and counts (instead of averaging per-rank means) keeps the
    value identical for any number of workers.
    """
    rank, world = dist_utils.rank_and_world()
    mine = np.arange(rank, len(blocks), world)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with evaluating(model) as net:
        for i in range(forward_rounds(len(mine), batch_size, is_sharded(net))):
            chunk = mine[i * batch_size:(i + 1) * batch_size]
            ids = torch.as_tensor(np.asarray(blocks[chunk if len(chunk) else [0]]), dtype=torch.long, device=device)
            loss = next_token_loss_sum(net, ids, device, compute_dtype)
            if len(chunk):  # an empty chunk was a rank's share of a collective forward: discarded
                total[0] += loss
                total[1] += ids[:, 1:].numel()
    dist_utils.all_reduce_sum(total)
    return float(total[0] / total[1])
