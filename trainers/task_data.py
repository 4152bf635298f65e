"""Multiple-choice downstream tasks as data: the task file, its examples, their tokens.

A task is a JSONL file, one example per line:

    {"prompt": "the cat sat on the", "choices": [" mat", " moon", " idea"], "answer": 0}

`prompt` and every choice are plain text; a choice is scored as the continuation of the
prompt, so it normally starts with the separator (a space) it needs. `answer` is the 0-based
index of the correct choice. Examples may have different numbers of choices.

Examples are tokenized once, where the tokenizer is (the sweep driver), into a
`TokenizedTask` that workers score without one (trainers/tasks.py). This module imports no
torch: the driver reads task files and never scores them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainers.errors import UserError

TASK_METRICS = ("accuracy", "correct_prob", "brier")  # per example, averaged: trainers/tasks.py


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
