"""Multiple-choice downstream tasks scored by log-likelihood (the loss perspective of Du et al. 2024).

The task file and its tokens are trainers/task_data.py.

Scoring: the log-likelihood of each choice given the prompt, summed over the choice's tokens
(or divided by their number with `length_normalized`). From those scores, per example:
- accuracy: 1 if the best-scoring choice is the answer;
- correct-choice probability: softmax of the scores over the choices, at the answer;
- Brier score: sum over choices of (p_k - [k == answer])^2 with the same softmax p
  (0 is perfect; a uniform guess over n choices scores 1 - 1/n).
The two continuous metrics show progress that accuracy hides until the answer wins.

Ranks of a Train worker group score disjoint shards of a `TokenizedTask` and sum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trainers import distributed as dist_utils
from trainers.evaluation import evaluating, forward_rounds, selected_logits
from trainers.parallel import is_sharded
from trainers.task_data import TASK_METRICS, TokenizedTask


@torch.no_grad()
def batch_log_likelihoods(model, items: list[tuple[list[int], list[list[int]]]], device: torch.device,
                          compute_dtype: torch.dtype | None = None) -> list[list[float]]:
    """For each (prompt, choices): summed log p(choice tokens | prompt) per choice, all in one
    right-padded forward pass (causal attention: padding after a sequence never affects it).
    The head is applied only at the positions that predict a choice token (in bounded chunks),
    never to the whole [batch, seq, vocab]."""
    seqs = [(prompt, c) for prompt, choices in items for c in choices]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    rows, positions, tokens, owner = [], [], [], []
    for i, (p, c) in enumerate(seqs):
        ids[i, :len(p) + len(c)] = torch.as_tensor(p + c, device=device)
        # The first choice token sits at len(p) and is predicted by the position one before.
        rows += [i] * len(c)
        positions += range(len(p) - 1, len(p) - 1 + len(c))
        tokens += c
        owner += [i] * len(c)
    rows_t, pos_t = torch.as_tensor(rows, device=device), torch.as_tensor(positions, device=device)
    tokens_t = torch.as_tensor(tokens, device=device)
    token_logp = torch.cat([F.log_softmax(logits, dim=-1).gather(1, tokens_t[start:start + len(logits), None])[:, 0]
                            for start, logits in selected_logits(model, ids, lambda t: t[rows_t, pos_t], device,
                                                                 compute_dtype)])
    flat = torch.zeros(len(seqs), dtype=torch.float64, device=device)
    flat.index_add_(0, torch.as_tensor(owner, device=device), token_logp.double())
    flat = flat.tolist()
    out, k = [], 0
    for _, choices in items:
        out.append(flat[k:k + len(choices)])
        k += len(choices)
    return out


def choice_log_likelihoods(model, prompt: list[int], choices: list[list[int]], device: torch.device,
                           compute_dtype: torch.dtype | None = None) -> list[float]:
    """Summed log p(choice tokens | prompt) for each choice of one example."""
    return batch_log_likelihoods(model, [(prompt, choices)], device, compute_dtype)[0]


def example_metrics(scores: list[float], answer: int) -> dict[str, float]:
    """Accuracy, correct-choice probability and Brier score of one example's choice scores."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.exp(s - s.max())
    p /= p.sum()
    target = np.zeros_like(p)
    target[answer] = 1.0
    return {"accuracy": float(int(np.argmax(s)) == answer), "correct_prob": float(p[answer]),
            "brier": float(((p - target) ** 2).sum())}


@torch.no_grad()
def evaluate_task(model, task: TokenizedTask, device: torch.device, length_normalized: bool = False,
                  compute_dtype: torch.dtype | None = None, batch_examples: int = 8) -> dict[str, float]:
    """Mean task metrics over all examples; ranks score disjoint shards and sum (any world size)."""
    rank, world = dist_utils.rank_and_world()
    totals = torch.zeros(len(TASK_METRICS) + 1, dtype=torch.float64, device=device)
    mine = list(range(rank, len(task.answers), world))
    with evaluating(model) as net:
        for round_ in range(forward_rounds(len(mine), batch_examples, is_sharded(net))):
            chunk = mine[round_ * batch_examples:(round_ + 1) * batch_examples]
            # A rank out of examples still joins a collective (FSDP) forward, on example 0, discarded.
            batch = batch_log_likelihoods(net, [(task.prompts[i], task.choices[i]) for i in chunk or [0]],
                                          device, compute_dtype)
            for i, scores in zip(chunk, batch):
                if length_normalized:
                    scores = [s / len(c) for s, c in zip(scores, task.choices[i])]
                m = example_metrics(scores, task.answers[i])
                totals += torch.tensor([m[k] for k in TASK_METRICS] + [1.0], dtype=torch.float64, device=device)
    dist_utils.all_reduce_sum(totals)
    n = float(totals[-1])
    return {k: float(totals[j]) / n if n else math.nan for j, k in enumerate(TASK_METRICS)}
