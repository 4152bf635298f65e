"""Gain, forgetting and the objective a sweep maximises (docs/ARCHITECTURE.md, "The words").

gain       = L_down(base) - L_down(trial)    nats/token, > 0 means it learned
forgetting = L_up(trial)  - L_up(base)       nats/token, > 0 means it forgot
joint      J = gain - forgetting_weight * max(forgetting, 0)
constrained: J = gain where forgetting <= max_forgetting, else
           -CONSTRAINT_PENALTY * (forgetting - max_forgetting) + min(gain, 0) - 1, so every
           infeasible trial ranks below every feasible one with gain > -1 nat, and infeasible
           trials rank by violation.
pareto:    schedulers still see the joint J; the searcher sees (gain, forgetting).
task term: with `objective.task` set, J += task_weight * task_gain, where task_gain is the
           task metric's improvement over the base model (for Brier, lower is better, so the
           gain is base - trial), e.g. downstream task score up, upstream forgetting down.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONSTRAINT_PENALTY = 10.0


class BaseReference(BaseModel):
    """Validation losses of the base model, measured once per sweep on the shared sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    L_up: float = Field(description="Base model's mean per-token loss on upstream validation (nats).")
    L_down: float = Field(description="Base model's mean per-token loss on downstream validation (nats).")
    tasks: dict[str, dict[str, float]] = Field(default_factory=dict, description=(
        "Per task: the base model's accuracy, correct_prob and brier, and the task's chance_accuracy."))


class ObjectiveConfig(BaseModel):
    """What a sweep maximises."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["joint", "constrained", "pareto"] = Field("joint", description="Objective type.")
    forgetting_weight: float = Field(1.0, ge=0, description="joint/pareto: lambda in J = gain - lambda * max(forgetting, 0).")
    max_forgetting: float | None = Field(None, ge=0, description="constrained: the most forgetting (nats/token) a config may have.")
    task: str | None = Field(None, description="A task (by name, from the spec's `tasks`) whose gain over the base model is added to J; it is then evaluated at every report point.")
    task_metric: Literal["accuracy", "correct_prob", "brier"] = Field("correct_prob", description="Which metric of `task` counts (continuous metrics show progress before accuracy does).")
    task_weight: float = Field(1.0, ge=0, description="Weight of the task gain in J (nats of loss per unit of the metric).")

    @model_validator(mode="after")
    def _constrained_needs_bound(self):
        if self.kind == "constrained" and self.max_forgetting is None:
            raise ValueError("objective.max_forgetting is required when objective.kind is 'constrained'")
        return self


def score(L_up: float, L_down: float, base: BaseReference, cfg: ObjectiveConfig,
          tasks: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Eval metrics and the objective; `tasks` are this point's task metrics (name -> metric -> value)."""
    gain = base.L_down - L_down
    forgetting = L_up - base.L_up
    if cfg.kind == "constrained":
        violation = forgetting - cfg.max_forgetting
        objective = gain if violation <= 0 else -CONSTRAINT_PENALTY * violation + min(gain, 0.0) - 1.0
    else:
        objective = gain - cfg.forgetting_weight * max(forgetting, 0.0)
    out = {"L_up": L_up, "L_down": L_down, "gain": gain, "forgetting": forgetting, "avg_loss": (L_up + L_down) / 2}
    if cfg.task is not None:
        if not tasks or cfg.task not in tasks or cfg.task not in base.tasks:
            raise ValueError(f"objective.task {cfg.task!r} was not evaluated (for the trial and the base model)")
        value, before = tasks[cfg.task][cfg.task_metric], base.tasks[cfg.task][cfg.task_metric]
        task_gain = (before - value) if cfg.task_metric == "brier" else (value - before)
        out["task_gain"] = task_gain
        objective += cfg.task_weight * task_gain
    out["objective"] = objective
    return out
