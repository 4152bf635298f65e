"""Multiple-choice downstream tasks scored by log-likelihood (the loss perspective of Du et al. 2024).

A task is a JSONL file, one example per line:

    {"prompt": "the cat sat on the", "choices": [" mat", " moon", " idea"], "answer": 0}

`prompt` and every choice are plain text; a choice is scored as the continuation of the
prompt, so it normally starts with the separator (a space) it needs. `answer` is the 0-based
index of the correct choice. Examples may have different numbers of choices.

Scoring: the log-likelihood of each choice given the prompt, summed over the choice's tokens
(or divided by their number with `length_normalized`). From those scores, per example:
- accuracy: 1 if the best-scoring choice is the answer;
- correct-choice probability: softmax of the scores over the choices, at the answer;
- Brier score: sum over choices of (p_k - [k == answer])^2 with the same softmax p
  (0 is perfect; a uniform guess over n choices scores 1 - 1/n).
The two continuous metrics show progress that accuracy hides until the answer wins.

Examples are tokenized once (where the tokenizer is, e.g. the sweep driver) into a
`TokenizedTask`; ranks of a Train worker group score disjoint shards and sum.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainers import distributed as dist_utils
from trainers.errors import UserError
from trainers.evaluation import evaluating, forward_rounds, selected_logits
from trainers.parallel import is_sharded


class TaskError(UserError, ValueError):
    """A task file that cannot be used; the message names the file, line and field."""


class TaskExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="Context the choices continue.")
    choices: list[str] = Field(min_length=2, description="Candidate continuations.")
    answer: int = Field(ge=0, description="0-based index of the correct choice.")

    @model_validator(mode="after")
    def _answer_in_range(self):
        if self.answer >= len(self.choices):
            raise ValueError(f"answer {self.answer} is out of range for {len(self.choices)} choices")
        if any(not c for c in self.choices):
            raise ValueError("a choice is empty")
        return self


def load_task_jsonl(path: str | Path) -> list[TaskExample]:
    """Read and validate a task file; any problem is a one-line `TaskError`."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"task file {path} does not exist")
    if not path.is_file():
        raise TaskError(f"task file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"task file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append(TaskExample.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "example"
            raise TaskError(f"{path}:{number}: {where}: {err['msg']}") from None
    if not examples:
        raise TaskError(f"task file {path} has no examples")
    return examples


class TokenizedTask(BaseModel):
    """A task ready to score on workers without a tokenizer."""

    model_config = ConfigDict(extra="forbid")

    name: str
    prompts: list[list[int]]
    choices: list[list[list[int]]]
    answers: list[int]
    chance_accuracy: float = Field(description="Expected accuracy of a uniform guess.")


def tokenize_task(name: str, examples: list[TaskExample], tokenizer, max_len: int | None = None) -> TokenizedTask:
    """Token ids of prompts and choices; prompts longer than `max_len` (with their longest
    choice) lose their oldest tokens, as a model with that context would see them."""
    prompts, choices = [], []
    for ex in examples:
        prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        prompts.append(prompt_ids)
        # Tokenize prompt+choice and keep what follows the prompt's tokens, so a BPE merge across
        # the boundary is scored as the model would see the text; fall back to the bare choice.
        row = []
        for choice in ex.choices:
            full = tokenizer(ex.prompt + choice, add_special_tokens=False)["input_ids"]
            tail = full[len(prompt_ids):] if full[:len(prompt_ids)] == prompt_ids else \
                tokenizer(choice, add_special_tokens=False)["input_ids"]
            if not tail:
                raise TaskError(f"task {name}: choice {choice!r} tokenizes to nothing")
            row.append(tail)
        if max_len is not None:
            room = max_len - max(len(c) for c in row)
            if room < 1:
                raise TaskError(f"task {name}: a choice of {ex.prompt[:40]!r}... is longer than the model's "
                                f"{max_len} positions")
            prompts[-1] = prompts[-1][-room:]
        choices.append(row)
    chance = float(np.mean([1.0 / len(c) for c in choices]))
    return TokenizedTask(name=name, prompts=prompts, choices=choices, answers=[ex.answer for ex in examples],
                         chance_accuracy=chance)


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


TASK_METRICS = ("accuracy", "correct_prob", "brier")


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
