"""Every quantity derived from a spec's sizes, in one function: steps, tokens and intervals.

A spec states sizes in tokens (they mean the same whatever the batch and sequence length);
the loop counts steps. `trial_cadence` converts once (a pure function of the sizes), rounding each interval to whole steps
and task evals to whole eval intervals, and the loop, the schedulers and the driver all use
its answer. Pure: tested against literal tables in tests/test_cadence.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Cadence:
    """A trial's sizes, in steps and tokens."""

    tokens_per_step: int  # global batch x sequence length
    total_steps: int  # steps of a trial that is not stopped early (the schedule's length)
    eval_every: int  # steps between report points
    checkpoint_every: int  # steps between checkpoints (at least eval_every; taken at a report point)
    task_eval_every: int | None  # steps between task evals (a multiple of eval_every); None: at checkpoints
    recovery_tokens: int  # after a trial's own warmup, tokens before the stopper may judge it

    @property
    def eval_tokens(self) -> int:
        """Tokens between two report points."""
        return self.eval_every * self.tokens_per_step

    @property
    def max_tokens(self) -> int:
        """Tokens of a trial that runs its whole budget."""
        return self.total_steps * self.tokens_per_step


def trial_cadence(global_batch_size: int, seq_len: int, tokens_per_trial: int, eval_every_tokens: int,
                  checkpoint_every_tokens: int, task_eval_every_tokens: int | None, recovery_frac: float) -> Cadence:
    """The cadence of every trial of a spec, from the spec's sizes (`SweepSpec.cadence()` passes them)."""
    per_step = global_batch_size * seq_len
    eval_every = max(1, round(eval_every_tokens / per_step))
    return Cadence(
        tokens_per_step=per_step,
        total_steps=tokens_per_trial // per_step,
        eval_every=eval_every,
        checkpoint_every=max(eval_every, round(checkpoint_every_tokens / per_step)),
        task_eval_every=(None if task_eval_every_tokens is None
                         else eval_every * max(1, round(task_eval_every_tokens / per_step / eval_every))),
        recovery_tokens=round(recovery_frac * tokens_per_trial),
    )


def asha_grace_tokens(cadence: Cadence, max_warmup_frac: float, recovery_frac: float, tokens_per_trial: int) -> int:
    """ASHA's one grace for all trials: the longest warmup in the space plus the recovery
    window, rounded up to a report point.

    A re-warmed trial's loss rises during and just after warmup (Gupta et al. 2023); judging
    it there kills exactly the high-LR trials that end best.
    """
    tokens = (max_warmup_frac + recovery_frac) * tokens_per_trial
    every = cadence.eval_tokens
    return max(every, math.ceil(tokens / every) * every)
