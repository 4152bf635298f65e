"""Held-out loss: mean per-token cross-entropy (nats) over fixed validation blocks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainers import distributed as dist_utils


@torch.no_grad()
def validation_loss(model, blocks: np.ndarray, batch_size: int, device: torch.device,
                    autocast: bool = False) -> float:
    """Mean next-token loss over `blocks` [N, L]; ranks split the blocks and sum.

    Summing token losses and counts (instead of averaging per-rank means) keeps the
    value identical for any number of workers.
    """
    rank, world = dist_utils.rank_and_world()
    mine = np.arange(rank, len(blocks), world)
    # The bare module, not the DDP wrapper: a DDP forward syncs buffers across ranks, and ranks
    # may hold different numbers of blocks.
    model = model.module if hasattr(model, "module") else model
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch_size):
        ids = torch.as_tensor(np.asarray(blocks[mine[i:i + batch_size]]), dtype=torch.long, device=device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1),
                               reduction="sum")
        total[0] += loss.double()
        total[1] += ids[:, 1:].numel()
    dist_utils.all_reduce_sum(total)
    if was_training:
        model.train()
    return float(total[0] / total[1])
