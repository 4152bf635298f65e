"""Learning-rate schedules as pure functions `lr(step)` of a config.

Steps are 0-based optimizer steps of a run with `total_steps` steps. Warmup is linear
over `W = round(warmup_frac * total_steps)` steps and never starts at exactly 0 (a step
with LR 0 is wasted compute): lr(s) = max_lr * (s + 1) / (W + 1) for s < W. With W = 0
the first step already runs at max_lr, which is the "no warmup" arm of Gupta et al. 2023.

- cosine:   warmup, cosine from max_lr to min_lr over the remaining steps (last step = min_lr).
- constant: warmup, then max_lr.
- infinite: warmup, cosine cooldown to constant_lr_ratio x max_lr over cooldown_frac,
            hold, then linear anneal to min_lr over the final anneal_frac
            (Ibrahim et al. 2024, sec. 7: the constant phase can be continued on new data
            without re-warming).
- wsd:      warmup, stable at max_lr, then 1-sqrt decay to min_lr over the final
            decay_frac (Hagele et al. 2024).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ScheduleKind = Literal["cosine", "constant", "infinite", "wsd"]
SCHEDULES: tuple[str, ...] = ("cosine", "constant", "infinite", "wsd")


class ScheduleShape(BaseModel):
    """The shape of the decay after warmup, shared by every trial of a sweep (the spec's
    `training` section embeds these fields as they are)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of max LR (cosine decays to 0.1x in the papers; also infinite, wsd).")
    constant_lr_ratio: float = Field(0.5, gt=0, le=1, description="infinite schedule: LR of the constant phase as a share of max LR.")
    cooldown_frac: float = Field(0.2, ge=0, le=1, description="infinite schedule: share of steps cooling down to the constant LR.")
    anneal_frac: float = Field(0.1, ge=0, le=1, description="infinite schedule: share of steps of the final anneal.")
    decay_frac: float = Field(0.2, ge=0, le=1, description="wsd schedule: share of steps of the final 1-sqrt decay.")

    def shape(self) -> dict[str, float]:
        """These fields alone (from a model that embeds them), to build a ScheduleConfig."""
        return {name: getattr(self, name) for name in ScheduleShape.model_fields}


class ScheduleConfig(ScheduleShape):
    """One LR schedule; `kind`, `max_lr` and `warmup_frac` are the re-warming knobs."""

    kind: ScheduleKind = Field("cosine", description="Schedule shape.")
    max_lr: float = Field(gt=0, description="Peak LR reached at the end of warmup.")
    warmup_frac: float = Field(0.01, ge=0, le=1, description="Share of total steps spent warming up linearly.")

    @model_validator(mode="after")
    def _phases_fit(self):
        if self.kind == "infinite" and self.warmup_frac + self.cooldown_frac + self.anneal_frac > 1:
            raise ValueError("infinite schedule: warmup_frac + cooldown_frac + anneal_frac must be <= 1")
        if self.kind == "wsd" and self.warmup_frac + self.decay_frac > 1:
            raise ValueError("wsd schedule: warmup_frac + decay_frac must be <= 1")
        return self

    @property
    def min_lr(self) -> float:
        return self.max_lr * self.min_lr_ratio


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    return round(cfg.warmup_frac * total_steps)


def lr_at(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """The learning rate of 0-based optimizer step `step`."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    step = min(max(step, 0), total_steps - 1)
    W = warmup_steps(cfg, total_steps)
    if step < W:
        return cfg.max_lr * (step + 1) / (W + 1)
    if cfg.kind == "constant":
        return cfg.max_lr
    if cfg.kind == "cosine":
        return _cosine(cfg.max_lr, cfg.min_lr, step - W, total_steps - W)
    if cfg.kind == "wsd":
        decay = round(cfg.decay_frac * total_steps)
        start = total_steps - decay
        if step < start:
            return cfg.max_lr
        p = (step - start + 1) / decay  # reaches 1 (min_lr) on the last step
        return cfg.min_lr + (cfg.max_lr - cfg.min_lr) * (1 - math.sqrt(p))
    if cfg.kind == "infinite":
        cooldown = round(cfg.cooldown_frac * total_steps)
        anneal = round(cfg.anneal_frac * total_steps)
        const_lr = cfg.max_lr * cfg.constant_lr_ratio
        if step < W + cooldown:
            return _cosine(cfg.max_lr, const_lr, step - W, cooldown + 1)
        start = total_steps - anneal
        if step < start:
            return const_lr
        p = (step - start + 1) / anneal
        return const_lr + (cfg.min_lr - const_lr) * p
    raise ValueError(f"unknown schedule {cfg.kind!r}; choose one of {SCHEDULES}")


def _cosine(hi: float, lo: float, i: int, n: int) -> float:
    """Cosine from hi (i=0) to lo (i=n-1) over n steps."""
    if n <= 1:
        return lo
    p = i / (n - 1)
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * p))


def lr_table(cfg: ScheduleConfig, total_steps: int) -> list[float]:
    return [lr_at(s, cfg, total_steps) for s in range(total_steps)]


def lr_array(cfg: ScheduleConfig, total_steps: int):
    """`lr_table` as a NumPy array, computed in NumPy: the schedule law reads whole schedules of
    10^4-10^5 steps per trial, where the per-step Python of `lr_at` costs 1 us a step. Equal to
    `lr_table` to rounding (tests/test_schedules.py, every kind). Read-only: schedules are shared
    and cached by whoever reads them."""
    import numpy as np

    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    step = np.arange(total_steps, dtype=float)
    W = warmup_steps(cfg, total_steps)

    def cosine(hi, lo, i, n):
        return np.full_like(i, lo) if n <= 1 else lo + 0.5 * (hi - lo) * (1 + np.cos(np.pi * i / (n - 1)))

    if cfg.kind == "constant":
        after = np.full(total_steps, cfg.max_lr)
    elif cfg.kind == "cosine":
        after = cosine(cfg.max_lr, cfg.min_lr, step - W, total_steps - W)
    elif cfg.kind == "wsd":
        decay = round(cfg.decay_frac * total_steps)
        start = total_steps - decay
        p = (step - start + 1) / max(decay, 1)
        after = np.where(step < start, cfg.max_lr,
                         cfg.min_lr + (cfg.max_lr - cfg.min_lr) * (1 - np.sqrt(np.clip(p, 0, None))))
    elif cfg.kind == "infinite":
        cooldown, anneal = round(cfg.cooldown_frac * total_steps), round(cfg.anneal_frac * total_steps)
        const_lr = cfg.max_lr * cfg.constant_lr_ratio
        start = total_steps - anneal
        after = np.where(step < W + cooldown, cosine(cfg.max_lr, const_lr, step - W, cooldown + 1),
                         np.where(step < start, const_lr,
                                  const_lr + (cfg.min_lr - const_lr) * (step - start + 1) / max(anneal, 1)))
    else:
        raise ValueError(f"unknown schedule {cfg.kind!r}; choose one of {SCHEDULES}")
    table = np.where(step < W, cfg.max_lr * (step + 1) / (W + 1), after)
    table.flags.writeable = False
    return table
