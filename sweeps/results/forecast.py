"""`rewarm forecast`: where each trial of a sweep will end, and which untried config looks best.

Reads the sweep back from MLflow (no Ray): its spec (the parent run's spec.yaml), the base
reference, and every trial's eval/L_up and eval/L_down curves. The schedule law
(sweeps/decisions/schedule_law.py) is fitted on the ended trials (completed and early-stopped:
each curve teaches the shared law) and then forecasts

- every trial's final gain, forgetting and objective with calibrated intervals (a running
  trial from the points it has; an ended one as the law sees it, beside what it measured);
- every config of the search space not run yet (choice lists as they are; a continuous range
  as `CANDIDATES_PER_AXIS` points, log-spaced for log-uniform ones), from its schedule and
  replay ratio alone, so the best predicted config can be tried next.

Diverged and failed trials are listed without a forecast: the law describes training that
works, and their curves are not fitted.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import yaml

from search_spaces.knobs import KNOBS, Knob, format_knobs
from search_spaces.params import Choice, Fixed, LogUniform, Uniform
from sweeps.config.resolve import trial_lrs
from sweeps.decisions.schedule_law import Forecast, Interval, LawForecaster, TrialCurves
from sweeps.decisions.stop_rule import ObjectiveOf
from sweeps.results.analyze import base_reference
from sweeps.tracking.mlflow_compat import metric_histories
from sweeps.config.loading import validate_spec
from sweeps.tracking.records import load_sweep, spec_text_of
from sweeps.tracking.tracker import SPEC_ARTIFACT
from sweeps.tracking.statuses import TrialStatus
from sweeps.tracking.tracker import EVAL_PREFIX
from trainers.errors import UserError
from trainers.objective import BaseReference

CANDIDATES_PER_AXIS = 5
FITTED_STATUSES = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED)
FORECAST_STATUSES = (*FITTED_STATUSES, TrialStatus.RUNNING, TrialStatus.INTERRUPTED)
L_UP, L_DOWN = f"{EVAL_PREFIX}L_up", f"{EVAL_PREFIX}L_down"


class ForecastError(UserError, ValueError):
    """A sweep the law cannot forecast (too few trials, an objective it does not model)."""


@dataclass(frozen=True)
class SweepForecast:
    sweep: str
    coverage: float
    fitted_on: int
    base: BaseReference
    trials: list[dict]  # one row per trial (see `_row`)
    untried: list[dict]  # every untried candidate config, best predicted objective first


def forecast_sweep(client, sweep: str, experiment: str | None = None, coverage: float = 0.9,
                   loaded: tuple | None = None) -> SweepForecast:
    """The law's forecast of every trial's end and of the untried configs (module docstring)."""
    parent, trials = loaded or load_sweep(client, sweep, experiment)
    spec = validate_spec(yaml.safe_load(spec_text_of(parent)), source=f"{SPEC_ARTIFACT} of sweep {sweep!r}")
    if spec.objective.task is not None:
        raise ForecastError(f"sweep {sweep!r}: objective.task {spec.objective.task!r} is scored on a task, and the law "
                            f"forecasts losses only; use an objective without a task to forecast")
    base = base_reference(parent)
    objective = ObjectiveOf(spec.objective, base)

    run_ids = [t["run_id"] for t in trials]
    histories = {k: metric_histories(client, run_ids, k) for k in (L_UP, L_DOWN)}
    curves = {}
    for t in trials:
        if not all(k in t for k in KNOBS):
            continue
        up = {m.step: m.value for m in histories[L_UP][t["run_id"]]}
        down = {m.step: m.value for m in histories[L_DOWN][t["run_id"]]}
        steps = sorted(s for s in set(up) & set(down) if s > 0 and math.isfinite(up[s]) and math.isfinite(down[s]))
        curves[t["trial_id"]] = TrialCurves(
            trial_lrs(spec, t), float(t[Knob.REPLAY_RATIO]), (0, *steps),
            (base.L_up, *(up[s] for s in steps)), (base.L_down, *(down[s] for s in steps)))

    forecaster = LawForecaster(objective, coverage=coverage)
    try:
        forecaster.fit([curves[t["trial_id"]] for t in trials
                        if t["status"] in FITTED_STATUSES and t["trial_id"] in curves])
    except ValueError as exc:  # degenerate curves (numpy's LinAlgError is a ValueError too)
        raise ForecastError(f"sweep {sweep!r}: the law could not be fitted to its curves ({exc})") from None
    if not forecaster.ready:
        ended = sum(t["status"] in FITTED_STATUSES for t in trials)
        raise ForecastError(f"sweep {sweep!r}: the law needs at least 3 ended trials with 3+ evals each, 2 of them "
                            f"completed; it has {ended} ended of {len(trials)} (forecast again later)")

    rows = [_row(t, curves.get(t["trial_id"]), forecaster, base) for t in trials]
    tried = {_key(t) for t in trials if all(k in t for k in KNOBS)}
    untried = []
    for knobs in _candidates(spec):
        if _key(knobs) in tried:
            continue
        fc = forecaster.forecast_untried(trial_lrs(spec, knobs), float(knobs[Knob.REPLAY_RATIO]), base.L_up, base.L_down)
        untried.append({"knobs": knobs, **_intervals(fc, base)})
    # Configs inside what finished trials cover first: beyond it the law extrapolates and its
    # intervals are not calibrated, so those are listed after, marked, never as "the best".
    untried.sort(key=lambda r: (r["extrapolated"], -r["objective"]["mean"]))
    rows.sort(key=lambda r: (bool(r["extrapolated"]), -(r["objective"]["mean"] if r["objective"] else -math.inf)))
    return SweepForecast(sweep, coverage, forecaster.fitted_on, base, rows, untried)


def _row(trial: dict, curves: TrialCurves | None, forecaster: LawForecaster, base: BaseReference) -> dict:
    row = {"trial_id": trial["trial_id"], "status": trial["status"],
           "knobs": {k: trial[k] for k in KNOBS if k in trial},
           "observed": {k: trial[k] for k in ("gain", "forgetting", "objective") if k in trial},
           "steps_seen": curves.steps[-1] if curves else 0, "steps_total": len(curves.lrs) if curves else None}
    fc = forecaster.forecast(curves) if curves is not None and trial["status"] in FORECAST_STATUSES else None
    return {**row, **(_intervals(fc, base) if fc else {"gain": None, "forgetting": None, "objective": None,
                                                        "extrapolated": None})}


def _intervals(fc: Forecast, base: BaseReference) -> dict:
    """Gain and forgetting intervals from the loss intervals (gain = base L_down - L_down)."""

    def flip(iv: Interval, ref: float) -> dict:
        return {"mean": ref - iv.mean, "lo": None if iv.hi is None else ref - iv.hi,
                "hi": None if iv.lo is None else ref - iv.lo}

    def shift(iv: Interval, ref: float) -> dict:
        return {"mean": iv.mean - ref, "lo": None if iv.lo is None else iv.lo - ref,
                "hi": None if iv.hi is None else iv.hi - ref}

    return {"gain": flip(fc.L_down, base.L_down), "forgetting": shift(fc.L_up, base.L_up),
            "objective": {"mean": fc.objective.mean, "lo": fc.objective.lo, "hi": fc.objective.hi},
            "extrapolated": fc.extrapolated}


def _candidates(spec) -> list[dict]:
    """The search space's configs as a finite grid (continuous ranges at CANDIDATES_PER_AXIS points)."""
    axes = {}
    for name, p in spec.knob_params().items():
        if isinstance(p, Fixed):
            axes[name] = [p.value]
        elif isinstance(p, Choice):
            axes[name] = list(p.values)
        elif isinstance(p, LogUniform):
            axes[name] = [float(v) for v in np.geomspace(p.low, p.high, CANDIDATES_PER_AXIS)]
        elif isinstance(p, Uniform):
            axes[name] = [float(v) for v in np.linspace(p.low, p.high, CANDIDATES_PER_AXIS)]
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _key(knobs: dict) -> tuple:
    return tuple(round(v, 12) if isinstance(v, float) else v for v in (knobs[k] for k in KNOBS))


# ---------------------------------------------------------------------- rendering


def _fmt(iv: dict | None) -> str:
    if iv is None:
        return "-"
    if iv["lo"] is None:
        return f"{iv['mean']:+.3f}"
    return f"{iv['mean']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"


def render_table(result: SweepForecast, top_untried: int = 5) -> str:
    lines = [f"sweep {result.sweep}: schedule-law forecast of final values, {result.coverage:.0%} intervals "
             f"(fitted on {result.fitted_on} ended trials)",
             f"{'trial':<12} {'status':<14} {'seen':>9}  {'gain':<26} {'forgetting':<26} {'objective':<26} "
             f"{'observed obj':>12}  knobs"]
    for r in result.trials:
        seen = f"{r['steps_seen']}/{r['steps_total']}" if r["steps_total"] else "-"
        observed = r["observed"].get("objective")
        mark = "*" if r["extrapolated"] else " "
        lines.append(f"{r['trial_id'] or '-':<11}{mark} {r['status']:<14} {seen:>9}  {_fmt(r['gain']):<26} "
                     f"{_fmt(r['forgetting']):<26} {_fmt(r['objective']):<26} "
                     f"{'-' if observed is None else f'{observed:+.3f}':>12}  {format_knobs(r['knobs'])}")
    inside = [r for r in result.untried if not r["extrapolated"]]
    if inside:
        lines.append(f"not tried yet, inside the finished trials' peak LRs and replay ratios ({len(inside)} of the "
                     f"space's {len(result.untried)} untried grid configs), best predicted first:")
        for r in inside[:top_untried]:
            lines.append(f"  objective {_fmt(r['objective']):<26} gain {_fmt(r['gain']):<26} "
                         f"forgetting {_fmt(r['forgetting']):<26} {format_knobs(r['knobs'])}")
    elif result.untried:
        lines.append(f"every untried config ({len(result.untried)}) lies outside the finished trials' peak LRs or "
                     f"replay ratios: the law would extrapolate, so none is ranked")
    else:
        lines.append("every config of the space's grid has been tried")
    if any(r["extrapolated"] for r in result.trials) or len(inside) < len(result.untried):
        lines.append("* peak LR or replay outside the finished trials': the law extrapolates, its interval is not "
                     "calibrated there")
    return "\n".join(lines)


def to_dict(result: SweepForecast) -> dict:
    return {"sweep": result.sweep, "coverage": result.coverage, "fitted_on": result.fitted_on,
            "base": {"L_up": result.base.L_up, "L_down": result.base.L_down}, "trials": result.trials, "untried": result.untried}
