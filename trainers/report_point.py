"""A report point: what the training loop tells the scheduler and the driver at each eval.

One definition of its fields, shared by the loop (which makes them), the stoppers (which
judge them), the sweep driver (which logs them to MLflow) and `rewarm train` (which prints
them). On the wire (Ray Tune's result dict, a run's `reports.jsonl`) a report point is a flat
dict: `ReportPoint.to_result()` writes it, `ReportPoint.from_result()` reads it back and
ignores the keys Tune adds of its own (`training_iteration`, `trial_id`, ...).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from enum import StrEnum

TASK_PREFIX = "task/"  # task metrics on the wire: task/<task>/<accuracy|correct_prob|brier>
SYSTEM_PREFIX = "system/"  # system metrics on the wire and in MLflow: system/<MLflow's name>
DIVERGED_OBJECTIVE = -1000.0  # a diverged run's objective: below any real one, finite for Optuna, ASHA, MLflow
_WIRE_NAMES = {"time_first_step": "time/first_step", "time_report": "time/report"}


class RunStatus(StrEnum):
    """Where a run is, as the loop reports it (the trial's final status is sweeps' TrialStatus)."""

    RUNNING = "running"  # more steps to come
    COMPLETED = "completed"  # trained its whole budget
    DIVERGED = "diverged"  # non-finite or runaway loss: the loop ended it
    STOPPED = "stopped"  # reached `stop_after_step` (rewarm train --stop-after-steps); resumable


@dataclass(frozen=True)
class ReportPoint:
    """One report point. Eval fields are None where nothing was evaluated (a diverged step,
    a throughput benchmark); `tasks` maps task -> metric -> value where tasks were scored."""

    tokens: int  # training tokens seen by the run so far (the schedulers' time axis)
    step: int = 0  # optimizer steps done
    status: RunStatus = RunStatus.RUNNING
    loss: float | None = None  # training loss of the last step
    lr: float | None = None  # LR of the last step
    grad_norm: float | None = None
    tokens_per_s: float | None = None  # mean over the steps since the previous report point
    replay_share: float | None = None  # realised share of upstream sequences over those steps
    world_size: int | None = None
    warmup_tokens: int = 0  # the run's warmup length in tokens (per-trial grace of the stopper)
    L_up: float | None = None
    L_down: float | None = None
    gain: float | None = None
    forgetting: float | None = None
    avg_loss: float | None = None
    task_gain: float | None = None
    objective: float | None = None
    best_objective: float | None = None
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    system: dict[str, float] = field(default_factory=dict)  # rank 0's node: trainers/system_metrics.py
    time_first_step: float | None = None  # wall clock of the run's first step (first report only)
    time_report: float | None = None  # wall clock when the report was made (report latency)

    # The evaluation fields, in the order MLflow shows them as eval/<name>.
    EVAL_FIELDS = ("L_up", "L_down", "gain", "forgetting", "objective", "avg_loss", "task_gain")

    def to_result(self) -> dict:
        """The flat dict Tune and reports.jsonl carry (None fields left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "tasks":
                out.update(self.task_metrics())
            elif f.name == "system":
                out.update({f"{SYSTEM_PREFIX}{k}": v for k, v in self.system.items()})
            elif value is not None:
                out[_WIRE_NAMES.get(f.name, f.name)] = str(value) if f.name == "status" else value
        return out

    @classmethod
    def from_result(cls, result: dict) -> "ReportPoint":
        """Read a report point back (Tune's own keys are ignored; absent fields take defaults)."""
        kwargs, tasks = {}, {}
        for f in dataclasses.fields(cls):
            key = _WIRE_NAMES.get(f.name, f.name)
            if key in result and f.name not in ("tasks", "system"):
                kwargs[f.name] = result[key]
        system = {k.removeprefix(SYSTEM_PREFIX): v for k, v in result.items() if k.startswith(SYSTEM_PREFIX)}
        if "status" in kwargs and kwargs["status"] in RunStatus.__members__.values():
            kwargs["status"] = RunStatus(kwargs["status"])  # any other value is kept as it came
        for key, value in result.items():
            if key.startswith(TASK_PREFIX):
                task, _, metric = key.removeprefix(TASK_PREFIX).rpartition("/")
                tasks.setdefault(task, {})[metric] = value
        return cls(tokens=int(kwargs.pop("tokens", 0)), tasks=tasks, system=system, **kwargs)

    def task_metrics(self) -> dict[str, float]:
        """Task metrics under their wire names (task/<task>/<metric>)."""
        return {f"{TASK_PREFIX}{t}/{k}": v for t, metrics in self.tasks.items() for k, v in metrics.items()}

    @property
    def diverged(self) -> bool:
        """The loop said so, or the loss is not a finite number."""
        return self.status == RunStatus.DIVERGED or (self.loss is not None and not is_finite(self.loss))


def is_finite(x) -> bool:
    """A real, finite number (numpy scalars included; bools are not numbers here)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
