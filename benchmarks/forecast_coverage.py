"""`make bench-sweep` (part): how well the schedule law forecasts a trial's end, on held-out
trials of the sweep-efficiency ground truth (36 configs x 16 report points, toy world).

Six folds over the configs: the forecaster (sweeps/decisions/schedule_law.py) is fitted on the
other five folds' full curves, then every held-out trial is forecast from every prefix of its
curve (the base point plus 0..15 evals; 0: a config not yet tried). Reported per metric (L_up, L_down, objective) and by
how much of its budget the trial had run: the share of held-out finals inside the stated 90%
interval (the goal: about 90%), the interval's mean width, and the mean absolute error of the
forecast mean. For comparison, the mean absolute error of the stopper's older forecast (a
linear map from the objective at the same token count to the final objective, fitted on the
same training folds; unsmoothed here).

Results: `benchmarks/results/forecast_coverage.json`.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from benchmarks.sweep_ground_truth import REPO, SPEC, load_or_build
from sweeps.decisions.schedule_law import LawForecaster, TrialCurves, _bucket, _BUCKETS

RESULTS = REPO / "benchmarks" / "results"
FOLDS = 6
COVERAGE = 0.9


def trial_curves(spec, config: dict) -> TrialCurves:
    """A ground-truth config as the forecaster sees a trial (step 0 = the base's losses)."""
    from sweeps.config.resolve import trial_lrs

    curve = config["curve"]
    base_up = curve[0]["L_up"] - curve[0]["forgetting"]
    base_down = curve[0]["L_down"] + curve[0]["gain"]
    return TrialCurves(trial_lrs(spec, config["knobs"]), float(config["knobs"]["replay_ratio"]),
                       (0, *(p["step"] for p in curve)), (base_up, *(p["L_up"] for p in curve)),
                       (base_down, *(p["L_down"] for p in curve)))


def objective_of(spec, config: dict):
    from trainers.objective import BaseReference, score

    first = config["curve"][0]
    base = BaseReference(L_up=first["L_up"] - first["forgetting"], L_down=first["L_down"] + first["gain"])
    return lambda L_up, L_down: score(L_up, L_down, base, spec.objective)["objective"]


def run(log=print) -> dict:
    from sweeps.config.loading import load_spec

    spec = load_spec(SPEC)
    truth = load_or_build(log=log)
    configs = truth["configs"]
    trials = [trial_curves(spec, c) for c in configs]
    objective = objective_of(spec, configs[0])  # one base reference per sweep
    order = np.random.default_rng(0).permutation(len(trials))
    rows = {name: {b: {"inside": [], "width": [], "abs_err": []} for b in range(len(_BUCKETS))}
            for name in ("L_up", "L_down", "objective")}
    linear_err = {b: [] for b in range(len(_BUCKETS))}
    t0 = time.perf_counter()
    fits = []
    for fold in range(FOLDS):
        held = set(order[fold::FOLDS].tolist())
        train = [t for i, t in enumerate(trials) if i not in held]
        forecaster = LawForecaster(objective, coverage=COVERAGE)
        f0 = time.perf_counter()
        forecaster.fit(train)
        fits.append(time.perf_counter() - f0)
        finals = [objective(t.L_up[-1], t.L_down[-1]) for t in train]
        for i in sorted(held):
            trial = trials[i]
            true = {"L_up": trial.L_up[-1], "L_down": trial.L_down[-1]}
            true["objective"] = objective(true["L_up"], true["L_down"])
            for n in range(1, len(trial.steps)):
                prefix = trial.prefix(n)
                b = _bucket(prefix)
                fc = forecaster.forecast(prefix)
                for name in rows:
                    iv = getattr(fc, name)
                    rows[name][b]["abs_err"].append(abs(iv.mean - true[name]))
                    if iv.lo is not None:
                        rows[name][b]["inside"].append(iv.lo <= true[name] <= iv.hi)
                        rows[name][b]["width"].append(iv.hi - iv.lo)
                if n == 1:
                    continue  # the base point is every trial's: nothing for the linear map to read
                # the older forecast: final objective ~ a + b * objective at the same point
                x = [objective(t.L_up[n - 1], t.L_down[n - 1]) for t in train]
                slope, intercept = np.polyfit(x, finals, 1)
                linear_err[b].append(abs(intercept + slope * objective(trial.L_up[n - 1], trial.L_down[n - 1])
                                         - true["objective"]))
    labels = ["untried (base only)", *(f"<= {int(e * 100)}% of budget" for e in _BUCKETS[1:])]
    table = {}
    for name, by_bucket in rows.items():
        table[name] = {}
        for b, r in by_bucket.items():
            table[name][labels[b]] = {
                "points": len(r["abs_err"]),
                "coverage": statistics.fmean(r["inside"]) if r["inside"] else None,
                "mean_width": statistics.fmean(r["width"]) if r["width"] else None,
                "mae": statistics.fmean(r["abs_err"])}
        inside = [x for r in by_bucket.values() for x in r["inside"]]
        table[name]["all"] = {"points": sum(len(r["abs_err"]) for r in by_bucket.values()),
                              "coverage": statistics.fmean(inside) if inside else None,
                              "mae": statistics.fmean([x for r in by_bucket.values() for x in r["abs_err"]])}
    table["objective, linear map (older forecast)"] = {labels[b]: {"mae": statistics.fmean(v)}
                                                      for b, v in linear_err.items() if v}
    out = {"ground_truth": truth["fingerprint"], "folds": FOLDS, "stated_coverage": COVERAGE,
           "configs": len(trials), "fit_s_median": statistics.median(fits), "wall_s": time.perf_counter() - t0,
           "table": table}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "forecast_coverage.json").write_text(json.dumps(out, indent=1) + "\n")
    for name, by in table.items():
        log(name)
        for label, r in by.items():
            cov = "" if r.get("coverage") is None else f"  coverage {r['coverage']:.2f}"
            log(f"  {label:>20}: MAE {r['mae']:.4f}{cov}")
    return out


if __name__ == "__main__":
    run()
