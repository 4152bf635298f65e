"""Schedule-aware early stopping for continual pre-training (`scheduler.kind: rewarm`).

Plain ASHA judges a trial on its raw objective as soon as its grace period ends. A re-warmed
trial's loss first rises, then falls (Gupta et al. 2023), and the higher its max LR the
deeper the bump, so ASHA kills exactly the high-LR trials that often end best. This stopper
differs in four ways, each a rule below (rule 3 can be turned off: `rungs`) with the reason it gives:

1. **Divergence stops at once**, even inside the grace window (non-finite loss or objective,
   or the loop's own `diverged` status).
2. **Per-trial grace**: never stop a trial before *its own* warmup plus a recovery window
   (`recovery_frac` of the budget), instead of one global grace sized for the longest warmup.
3. **Equal tokens, smoothed value**: trials are compared at geometric token rungs (like ASHA,
   keep the top 1/`reduction_factor`), on an exponential moving average of their objective
   over the points after their grace window, so one noisy eval does not decide and the
   warmup bump does not linger in the average.
4. **Forecast** (`forecast`, off by default: on the sweep-efficiency benchmark the rungs alone
   kept a near-best config in every run with the least compute), two kinds:
   - `linear`: once `forecast_min_trials` trials have run to the full budget, a
     linear map from the smoothed objective at each token count to the final objective is
     fitted over them; a trial whose forecast final objective, plus `forecast_margin_sd`
     prediction standard deviations, is still below the best final seen so far is stopped.
   - `law` (the default kind): a schedule law (Tissue et al. 2024; sweeps/decisions/schedule_law.py) is fitted to
     the L_up and L_down curves of every ended trial, stopped ones included, as functions of
     each trial's known LR schedule and replay ratio; it forecasts a running trial's final
     losses, hence its objective, with a split-conformal `forecast_coverage` interval. The
     trial is stopped, at any point, rising or not, once the interval's top is below the best
     final. The law expects the re-warming rise, so no grace window is needed for it; with
     `rungs: false` only the law (and divergence) stops trials.

`StopRule` is the pure decision logic (no Ray: unit-tested on synthetic curves, and timed
with 1,000 trials in `benchmarks/search_scale_bench.py`);
`sweeps/execution/schedulers.py: ScheduleAwareScheduler` adapts it to Ray Tune's
`TrialScheduler` API and writes every decision, with its reason, to
`<trials dir>/<trial id>/decisions.jsonl`, which the sweep driver logs to the trial's MLflow run.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from pydantic import BaseModel, ConfigDict, Field

from sweeps.decisions.schedule_law import Forecast, LawForecaster, TrialCurves
from trainers.objective import BaseReference, ObjectiveConfig, score
from trainers.report_point import ReportPoint, RunStatus, is_finite
from trainers.schedules import ScheduleConfig, lr_array

CONTINUE, STOP = "continue", "stop"
SURPRISE_SD = 4.0  # a newest eval this many predictive sd from the law's expectation needs confirming


class StopRuleSettings(BaseModel):
    """The stopper's user-facing settings (the spec's `scheduler` section embeds them as they are)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reduction_factor: int = Field(3, ge=2, description="Keep the top 1/reduction_factor of trials at each rung.")
    smoothing: float = Field(0.5, gt=0, le=1, description="'rewarm' only: EMA weight of the newest objective (1 = no smoothing).")
    forecast: bool = Field(False, description=(
        "'rewarm' only: also stop trials whose forecast final objective is dominated (`forecaster`). Off by "
        "default: on the sweep-efficiency benchmark the rungs alone kept a near-best config in every run with "
        "less compute than the law, and the linear forecast lost it in some (README, Sweep efficiency)."))
    forecaster: Literal["law", "linear"] = Field("law", description=(
        "'rewarm' only: 'law' fits a schedule law (L = L0 + A (S1 + s0)^-alpha - C S2 over each trial's LR "
        "schedule; sweeps/decisions/schedule_law.py) to every ended trial and stops a trial, at any point "
        "including its re-warming rise, once the top of its calibrated `forecast_coverage` interval is below "
        "the best final objective; 'linear' maps the smoothed objective at k tokens to the final objective "
        "over finished trials and stops when forecast + forecast_margin_sd sd is below the best final."))
    forecast_min_trials: int = Field(3, ge=3, description="'rewarm' only: finished trials needed before forecasting.")
    forecast_margin_sd: float = Field(1.0, ge=0, description="'rewarm', forecaster 'linear' only: stop if forecast + this many prediction sd < best final.")
    forecast_coverage: float = Field(0.95, gt=0.5, lt=1, description="'rewarm', forecaster 'law' only: coverage of the forecast interval whose top must be below the best final to stop.")
    rungs: bool = Field(True, description="'rewarm' only: also stop at ASHA-style rungs (bottom of the smoothed objective at equal tokens); false: only forecasts and divergence stop trials.")

    def settings(self) -> dict:
        """These fields alone (from a model that embeds them), to build a StopRuleConfig."""
        return {name: getattr(self, name) for name in StopRuleSettings.model_fields}


class StopRuleConfig(StopRuleSettings):
    """Everything the stop rule needs: the settings, plus token counts derived from the spec
    (sweeps/config/cadence.py)."""

    max_tokens: int = Field(ge=1, description="A trial's full budget in tokens (no decision is needed at or past it).")
    recovery_tokens: int = Field(0, ge=0, description="Tokens after a trial's warmup before it may be judged.")
    min_grace_tokens: int = Field(1, ge=1, description="No trial is judged before this many tokens (at least one eval).")
    objective: ObjectiveConfig = Field(ObjectiveConfig(), description="The sweep's objective (forecaster 'law' forecasts losses, then scores them).")


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


@dataclass(frozen=True, eq=False)
class TrialSchedule:
    """What the law needs to know of a trial before it reports: its LR schedule and replay ratio
    (sweeps/execution/schedulers.py reads them off the trial's config).

    Kept as the schedule's config, a few numbers, not as the LR of every step: the stopper's
    state is pickled at every decision, and 1,000 trials of 25k steps would be 25M floats. The
    LR table is built when the law first needs it and never pickled.
    """

    schedule: ScheduleConfig
    total_steps: int
    replay: float

    @cached_property
    def lrs(self) -> np.ndarray:
        return lr_array(self.schedule, self.total_steps)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lrs"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class _Trial:
    smoothed: float | None = None
    last_tokens: int = -1
    history: list = field(default_factory=list)  # (tokens, smoothed) after each new report
    next_rung: int = 0
    done: bool = False
    schedule: TrialSchedule | None = None
    points: list = field(default_factory=list)  # (step, L_up, L_down) of each new report, base first
    law_stop_pending: bool = False  # the law voted stop at a surprising eval: the next one decides

    def curves(self) -> TrialCurves | None:
        if self.schedule is None or len(self.points) < 2:
            return None
        steps, up, down = zip(*self.points)
        return TrialCurves(self.schedule.lrs, self.schedule.replay, steps, up, down)


@dataclass(frozen=True)
class ObjectiveOf:
    """The sweep objective of final losses (picklable: the stopper's state is pickled)."""

    cfg: ObjectiveConfig
    base: BaseReference

    def __call__(self, L_up: float, L_down: float) -> float:
        return score(L_up, L_down, self.base, self.cfg)["objective"]


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
        # The law's curves, fits and refits cost work at every report and trial end: only when
        # it decides (forecast on, forecaster 'law').
        self.uses_law = cfg.forecast and cfg.forecaster == "law"
        self.law: LawForecaster | None = None  # built at the first report with losses
        self._ended: dict[str, None] = {}  # every ended trial with curves (finished or stopped), in order
        self._law_fitted_on = 0

    @staticmethod
    def _rungs(cfg: StopRuleConfig) -> list[int]:
        rungs, t = [], cfg.min_grace_tokens
        while t < cfg.max_tokens:
            rungs.append(int(t))
            t *= cfg.reduction_factor
        return rungs

    # ------------------------------------------------------------------ results

    def observe(self, trial_id: str, result: dict, schedule: TrialSchedule | None = None) -> Decision:
        """The decision on one report point (a Tune result dict; see trainers/report_point.py).
        `schedule`: the trial's LR schedule and replay ratio, for forecaster 'law'."""
        decision = self._decide(trial_id, result, schedule)
        if decision.action == STOP:
            self._ended_now(trial_id)
        return decision

    def _decide(self, trial_id: str, result: dict, schedule: TrialSchedule | None) -> Decision:
        cfg = self.cfg
        trial = self._trials.setdefault(trial_id, _Trial())
        if schedule is not None and trial.schedule is None:
            trial.schedule = schedule
        point = ReportPoint.from_result(result)
        tokens, value, loss = point.tokens, point.objective, point.loss

        def decide(action: str, reason: str) -> Decision:
            return Decision(trial_id, tokens, action, reason, _num(value), trial.smoothed)

        diverged = point.status == RunStatus.DIVERGED
        if value is None and not diverged:
            return decide(CONTINUE, "no objective in this result")
        if diverged or (loss is not None and not is_finite(loss)) or not is_finite(value):
            return decide(STOP, f"diverged at {tokens} tokens (loss {loss}, objective {value}): stopped at once")
        if tokens <= trial.last_tokens:
            # A Train restart re-reports points it already made; they change nothing.
            d = decide(CONTINUE, f"repeat of the report at {tokens} tokens (after a restart)")
            d.repeat = True
            return d
        trial.last_tokens = tokens
        self._record_losses(trial, point)
        grace = max(cfg.min_grace_tokens, int(point.warmup_tokens) + cfg.recovery_tokens)
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
        law = self._law_forecast(trial) if self.uses_law else None
        # Beyond the finished trials' peak LRs or replay ratios the law extrapolates and its
        # intervals are not calibrated: it does not stop such a trial (rungs still may).
        extrapolated = law is not None and law.extrapolated
        if extrapolated:
            law = None
        if law is not None and law.objective.hi < self.best_final:
            # No grace here: the law expects the re-warming rise, so a trial is stopped during
            # it only when even the top of its interval, bump included, cannot reach the best.
            verdict = (f"law forecast final objective {law.objective.mean:.4f} (top of its "
                       f"{cfg.forecast_coverage:.0%} interval {law.objective.hi:.4f}) < best final "
                       f"{self.best_final:.4f} ({self.law.fitted_on} ended trials)")
            surprise = self.law.surprise(trial.curves())
            if surprise > SURPRISE_SD and not trial.law_stop_pending:
                # The newest eval is far from what the law expected of this trial: a spike of
                # one eval looks like that, so the next eval must confirm the stop.
                trial.law_stop_pending = True
                return decide(CONTINUE, f"{verdict}, but the newest eval is {surprise:.1f} sd from the law's "
                                        f"expectation: stop deferred until the next eval confirms it")
            return decide(STOP, verdict)
        trial.law_stop_pending = False
        if tokens < grace:
            return decide(CONTINUE, f"in warmup + recovery window (until {grace} tokens)")

        for rung in (crossed if cfg.rungs else ()):
            values = self._rung_values[rung]
            cutoff = _quantile(values, 1 - 1 / cfg.reduction_factor) if values else None
            bisect.insort(values, trial.smoothed)
            if cutoff is not None and trial.smoothed < cutoff:
                return decide(STOP, f"rung {self.rungs[rung]} tokens: smoothed objective {trial.smoothed:.4f} < "
                                    f"top-1/{cfg.reduction_factor} cutoff {cutoff:.4f} of {len(values) - 1} trials")

        if extrapolated:
            return decide(CONTINUE, "law: peak LR or replay outside the finished trials' range, no law stop")
        if law is not None:
            return decide(CONTINUE, f"law forecast final objective {law.objective.mean:.4f} in "
                                    f"[{law.objective.lo:.4f}, {law.objective.hi:.4f}] can still reach the best "
                                    f"final {self.best_final:.4f}")
        if cfg.forecast and cfg.forecaster == "linear" and self.best_final is not None:
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
        """A trial ended. Only a trial that ran its full budget teaches the linear forecast and
        sets the best final; the law learns from every ended trial's curve."""
        trial = self._trials.get(trial_id)
        if trial is None or trial.done:
            return
        trial.done = True
        point = ReportPoint.from_result(result)
        final = point.objective
        if point.tokens < self.cfg.max_tokens or point.status == RunStatus.DIVERGED or not is_finite(final):
            self._ended_now(trial_id)
            return
        self.finished += 1
        self.best_final = final if self.best_final is None else max(self.best_final, final)
        for tokens, smoothed in trial.history[:-1]:
            self._fits.setdefault(tokens, _LinearFit()).add(smoothed, final)
        self._ended_now(trial_id)

    # ------------------------------------------------------------------ the schedule law

    def _record_losses(self, trial: _Trial, point: ReportPoint) -> None:
        if not self.uses_law or not all(is_finite(x) for x in (point.L_up, point.L_down)):
            return
        if not trial.points and is_finite(point.gain) and is_finite(point.forgetting):
            # The base model's losses (the same for every trial of the sweep) as its step 0.
            base = BaseReference(L_up=point.L_up - point.forgetting, L_down=point.L_down + point.gain)
            trial.points.append((0, base.L_up, base.L_down))
            if self.law is None:
                self.law = LawForecaster(ObjectiveOf(self.cfg.objective, base), coverage=self.cfg.forecast_coverage)
        if trial.points:
            trial.points.append((point.step, point.L_up, point.L_down))

    def _ended_now(self, trial_id: str) -> None:
        """Keep an ended trial's curves for the law, and refit it when enough are new: at every
        new ended trial up to 20, then each time their number grows by a tenth (a fit of 1,000
        trials takes seconds; benchmarks/search_scale_bench.py)."""
        trial = self._trials.get(trial_id)
        if self.law is None or trial is None or trial.curves() is None or trial_id in self._ended:
            return
        self._ended[trial_id] = None
        n = len(self._ended)
        if self.finished >= self.cfg.forecast_min_trials and (n <= 20 or n >= 1.1 * self._law_fitted_on):
            self.law.fit([self._trials[t].curves() for t in self._ended])
            self._law_fitted_on = n

    def _law_forecast(self, trial: _Trial) -> Forecast | None:
        """The trial's law forecast, when there is a calibrated interval and a best to beat."""
        if self.law is None or not self.law.ready or self.best_final is None:
            return None
        curves = trial.curves()
        forecast = self.law.forecast(curves) if curves is not None else None
        return forecast if forecast is not None and forecast.objective.hi is not None else None


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list (numpy's default method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _num(x):
    return float(x) if is_finite(x) else None
