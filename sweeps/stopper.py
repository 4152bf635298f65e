"""Schedule-aware early stopping for continual pre-training (`scheduler.kind: rewarm`).

Plain ASHA judges a trial on its raw objective as soon as its grace period ends. A re-warmed
trial's loss first rises, then falls (Gupta et al. 2023), and the higher its max LR the
deeper the bump, so ASHA kills exactly the high-LR trials that often end best. This stopper
differs in four ways, each a rule below with the reason it gives:

1. **Divergence stops at once**, even inside the grace window (non-finite loss or objective,
   or the loop's own `diverged` status).
2. **Per-trial grace**: never stop a trial before *its own* warmup plus a recovery window
   (`recovery_frac` of the budget), instead of one global grace sized for the longest warmup.
3. **Equal tokens, smoothed value**: trials are compared at geometric token rungs (like ASHA,
   keep the top 1/`reduction_factor`), on an exponential moving average of their objective
   over the points after their grace window, so one noisy eval does not decide and the
   warmup bump does not linger in the average.
4. **Forecast**: once `forecast_min_trials` trials have run to the full budget, a linear map
   from the smoothed objective at each token count to the final objective is fitted over
   them; a trial whose forecast final objective, plus `forecast_margin_sd` prediction
   standard deviations, is still below the best final seen so far is stopped as dominated.

`StopRule` is the pure decision logic (no Ray: unit-tested on synthetic curves, and timed
with 1,000 trials in `benchmarks/search_scale_bench.py`); `ScheduleAwareScheduler` adapts it
to Ray Tune's `TrialScheduler` API and writes every decision, with its reason, to
`<trials dir>/<trial id>/decisions.jsonl`, which the sweep driver logs to the trial's MLflow run.
"""

from __future__ import annotations

import bisect
import json
import math
import numbers
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

DECISIONS_FILE = "decisions.jsonl"
STATE_FILE = "stopper_state.pkl"  # beside the trials dir: what `rewarm resume` restores
CONTINUE, STOP = "continue", "stop"


class StopRuleConfig(BaseModel):
    """Settings of the schedule-aware stopper (they mirror the spec's `scheduler` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(ge=1, description="A trial's full budget in tokens (no decision is needed at or past it).")
    recovery_tokens: int = Field(0, ge=0, description="Tokens after a trial's warmup before it may be judged.")
    min_grace_tokens: int = Field(1, ge=1, description="No trial is judged before this many tokens (at least one eval).")
    reduction_factor: int = Field(3, ge=2, description="At each rung keep the top 1/reduction_factor of trials.")
    smoothing: float = Field(0.5, gt=0, le=1, description="EMA weight of the newest objective (1 = no smoothing).")
    forecast: bool = Field(True, description="Stop trials whose forecast final objective is dominated.")
    forecast_min_trials: int = Field(3, ge=3, description="Finished trials needed before forecasting.")
    forecast_margin_sd: float = Field(1.0, ge=0, description="Stop only if forecast + margin x prediction sd < best final.")


@dataclass
class Decision:
    trial_id: str
    tokens: int
    action: str  # CONTINUE or STOP
    reason: str
    objective: float | None = None
    smoothed: float | None = None
    repeat: bool = False  # a report replayed after a restart: not a new decision

    def as_dict(self) -> dict:
        return {"trial_id": self.trial_id, "tokens": self.tokens, "action": self.action, "reason": self.reason,
                "objective": self.objective, "smoothed": self.smoothed, "time": time.time()}


@dataclass
class _LinearFit:
    """Running sums for y = a + b x by least squares, updated in O(1) per finished trial."""

    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        self.syy += y * y

    def predict(self, x: float) -> tuple[float, float] | None:
        """(prediction, prediction sd) at x, or None if the fit is not determined."""
        n = self.n
        if n < 3:
            return None
        mx, my = self.sx / n, self.sy / n
        vxx = self.sxx - n * mx * mx
        vxy = self.sxy - n * mx * my
        vyy = self.syy - n * my * my
        if vxx <= 1e-12 * max(1.0, abs(self.sxx)):
            return None
        b = vxy / vxx
        sse = max(0.0, vyy - b * vxy)
        s = math.sqrt(sse / (n - 2))
        sd = s * math.sqrt(1 + 1 / n + (x - mx) ** 2 / vxx)
        return my + b * (x - mx), sd


@dataclass
class _Trial:
    smoothed: float | None = None
    last_tokens: int = -1
    history: list = field(default_factory=list)  # (tokens, smoothed) after each new report
    next_rung: int = 0
    done: bool = False


class StopRule:
    """The decisions, as a pure function of the results seen so far (maximising `objective`)."""

    def __init__(self, cfg: StopRuleConfig):
        self.cfg = cfg
        self.rungs = self._rungs(cfg)
        self._rung_values: list[list[float]] = [[] for _ in self.rungs]  # sorted smoothed values per rung
        self._fits: dict[int, _LinearFit] = {}  # token count -> fit of final objective on smoothed value
        self._trials: dict[str, _Trial] = {}
        self.best_final: float | None = None
        self.finished = 0

    @staticmethod
    def _rungs(cfg: StopRuleConfig) -> list[int]:
        rungs, t = [], cfg.min_grace_tokens
        while t < cfg.max_tokens:
            rungs.append(int(t))
            t *= cfg.reduction_factor
        return rungs

    # ------------------------------------------------------------------ results

    def observe(self, trial_id: str, result: dict) -> Decision:
        cfg = self.cfg
        trial = self._trials.setdefault(trial_id, _Trial())
        tokens = int(result.get("tokens", 0))
        value = result.get("objective")
        loss = result.get("loss")

        def decide(action: str, reason: str) -> Decision:
            return Decision(trial_id, tokens, action, reason, _num(value), trial.smoothed)

        if value is None and result.get("status") != "diverged":
            return decide(CONTINUE, "no objective in this result")
        if (result.get("status") == "diverged" or (loss is not None and not _is_finite(loss))
                or not _is_finite(value)):
            return decide(STOP, f"diverged at {tokens} tokens (loss {loss}, objective {value}): stopped at once")
        if tokens <= trial.last_tokens:
            # A Train restart re-reports points it already made; they change nothing.
            d = decide(CONTINUE, f"repeat of the report at {tokens} tokens (after a restart)")
            d.repeat = True
            return d
        trial.last_tokens = tokens
        grace = max(cfg.min_grace_tokens, int(result.get("warmup_tokens", 0)) + cfg.recovery_tokens)
        if tokens >= grace:
            # Smooth only what comes after the grace window: the warmup bump must not drag the
            # average down once the trial is judged.
            trial.smoothed = value if trial.smoothed is None else (
                cfg.smoothing * value + (1 - cfg.smoothing) * trial.smoothed)
            trial.history.append((tokens, trial.smoothed))
        if tokens >= cfg.max_tokens:
            return decide(CONTINUE, "full budget reached")
        # Record the value at every rung crossed, so later trials are compared at equal tokens.
        crossed = []
        while trial.next_rung < len(self.rungs) and tokens >= self.rungs[trial.next_rung]:
            crossed.append(trial.next_rung)
            trial.next_rung += 1
        if tokens < grace:
            return decide(CONTINUE, f"in warmup + recovery window (until {grace} tokens)")

        for rung in crossed:
            values = self._rung_values[rung]
            cutoff = _quantile(values, 1 - 1 / cfg.reduction_factor) if values else None
            bisect.insort(values, trial.smoothed)
            if cutoff is not None and trial.smoothed < cutoff:
                return decide(STOP, f"rung {self.rungs[rung]} tokens: smoothed objective {trial.smoothed:.4f} < "
                                    f"top-1/{cfg.reduction_factor} cutoff {cutoff:.4f} of {len(values) - 1} trials")

        if cfg.forecast and self.best_final is not None:
            fit = self._fits.get(tokens)
            if fit is not None and fit.n >= cfg.forecast_min_trials:
                predicted = fit.predict(trial.smoothed)
                if predicted is not None:
                    mean, sd = predicted
                    upper = mean + cfg.forecast_margin_sd * sd
                    if upper < self.best_final:
                        return decide(STOP, f"forecast final objective {mean:.4f} (+{cfg.forecast_margin_sd:g} sd = "
                                            f"{upper:.4f}) < best final {self.best_final:.4f} ({fit.n} finished trials)")
                    return decide(CONTINUE, f"forecast final objective {mean:.4f} +- {sd:.4f} can still reach the "
                                            f"best final {self.best_final:.4f}")
        return decide(CONTINUE, "kept: at or above every rung cutoff so far" if crossed or trial.next_rung
                      else "kept: no rung reached yet")

    def complete(self, trial_id: str, result: dict) -> None:
        """A trial ended. Only a trial that ran its full budget teaches the forecast."""
        trial = self._trials.get(trial_id)
        if trial is None or trial.done:
            return
        trial.done = True
        final = result.get("objective")
        if (int(result.get("tokens", 0)) < self.cfg.max_tokens or result.get("status") == "diverged"
                or not _is_finite(final)):
            return
        self.finished += 1
        self.best_final = final if self.best_final is None else max(self.best_final, final)
        for tokens, smoothed in trial.history[:-1]:
            self._fits.setdefault(tokens, _LinearFit()).add(smoothed, final)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list (numpy's default method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _is_finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _num(x):
    return float(x) if _is_finite(x) else None


# ---------------------------------------------------------------------- Ray Tune adapter


class ScheduleAwareScheduler(FIFOScheduler):
    """Ray Tune `TrialScheduler` around `StopRule`; every decision goes to the trial's decisions.jsonl.

    Tune does not checkpoint a scheduler's state (a restored Tuner gets the scheduler as it was
    pickled at the start), so the rule's state is written to `<sweep dir>/stopper_state.pkl`
    after every change and read back on first use after `rewarm resume`: rung values, forecast
    fits and each trial's position survive, and reports replayed after a restart are ignored.
    """

    def __init__(self, cfg: StopRuleConfig, decisions_root: str | None = None):
        super().__init__()
        self.rule = StopRule(cfg)
        self.decisions_root = decisions_root
        self.stopped = 0
        self._restored = False

    @property
    def _state_path(self) -> Path | None:
        return Path(self.decisions_root).parent / STATE_FILE if self.decisions_root else None

    def _restore_once(self) -> None:
        if self._restored:
            return
        self._restored = True
        path = self._state_path
        if path is not None and path.exists():
            with open(path, "rb") as f:
                self.rule, self.stopped = pickle.load(f)

    def _persist(self) -> None:
        path = self._state_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump((self.rule, self.stopped), f)
        os.replace(tmp, path)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # The rule always maximises the sweep objective; accept only that.
        return metric in (None, "objective") and mode in (None, "max")

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._restore_once()
        decision = self.rule.observe(trial.trial_id, result)
        if decision.repeat:
            return TrialScheduler.CONTINUE
        if decision.action == STOP:
            self.stopped += 1
        self._record(decision)
        self._persist()
        return TrialScheduler.STOP if decision.action == STOP else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._restore_once()
        self.rule.complete(trial.trial_id, result or {})
        self._persist()

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass  # its recorded rung values stay: they are real measurements

    def on_trial_error(self, tune_controller, trial) -> None:
        pass

    def debug_string(self) -> str:
        return f"Schedule-aware stopper: {self.stopped} stopped, {self.rule.finished} finished"

    def _record(self, decision: Decision) -> None:
        if not self.decisions_root:
            return
        directory = Path(self.decisions_root) / decision.trial_id
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / DECISIONS_FILE, "a") as f:
            f.write(json.dumps(decision.as_dict()) + "\n")
