"""Task performance as a function of pre-training loss (Du et al. 2024), fitted over a sweep.

Pure functions over (loss, metric) points, where each point is one eval of one trial:
- `monotone_fit`: the best least-squares fit of the metric that only improves as loss falls
  (pool-adjacent-violators, `scipy.optimize.isotonic_regression`), i.e. "performance is a
  function of loss" with no shape assumed;
- `threshold_fit`: a broken stick: the metric sits at chance while loss >= theta and improves
  linearly below it; theta is "the loss below which the task leaves chance";
- `bootstrap_threshold`: theta's uncertainty, resampling whole trials (points of one trial are
  not independent), a percentile interval from `scipy.stats.bootstrap`;
- `spearman`: rank correlation of loss and metric (`scipy.stats.spearmanr`);
- `loss_predicts_metric`: leave-one-trial-out error of the monotone fit against predicting
  the mean, i.e. how well loss alone predicts the metric on a trial with another LR and replay.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from scipy.optimize import isotonic_regression


def monotone_fit(loss, metric, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sorted losses, fitted metric): non-increasing in loss for higher-is-better metrics."""
    loss, metric = np.asarray(loss, float), np.asarray(metric, float)
    order = np.argsort(-loss)  # from high loss to low loss the metric may only improve
    fitted = isotonic_regression(metric[order], increasing=higher_is_better).x
    return loss[order], fitted


def predict_monotone(x_sorted_desc: np.ndarray, fitted: np.ndarray, loss) -> np.ndarray:
    """Step-interpolate a monotone fit at new losses (clamped to the fitted range)."""
    x = x_sorted_desc[::-1]
    y = fitted[::-1]
    return np.interp(np.asarray(loss, float), x, y)


def threshold_fit(loss, metric, chance: float, higher_is_better: bool = True) -> dict:
    """Least-squares broken stick with the plateau fixed at `chance`.

    metric = chance                      for loss >= theta
    metric = chance + slope (theta - loss) for loss <  theta    (slope >= 0; sign flipped for Brier)
    Returns theta, slope, and the fit's R^2 against the constant-at-chance model.
    """
    loss, metric = np.asarray(loss, float), np.asarray(metric, float)
    y = (metric - chance) if higher_is_better else (chance - metric)
    candidates = np.unique(np.concatenate([loss, [loss.max() + 1e-9]]))
    best = (np.inf, float(loss.max()), 0.0)
    for theta in candidates:
        h = np.clip(theta - loss, 0.0, None)
        hh = float(h @ h)
        slope = max(0.0, float(h @ y) / hh) if hh > 0 else 0.0
        sse = float(((y - slope * h) ** 2).sum())
        if sse < best[0] - 1e-15:
            best = (sse, float(theta), slope)
    sse, theta, slope = best
    sse_chance = float((y ** 2).sum())
    return {"theta": theta, "slope": slope if higher_is_better else -slope,
            "r2_vs_chance": 1 - sse / sse_chance if sse_chance > 0 else 0.0}


def bootstrap_threshold(loss, metric, groups, chance: float, higher_is_better: bool = True,
                        samples: int = 200, seed: int = 0, level: float = 0.9) -> dict:
    """theta with a percentile bootstrap interval over groups (trials); returns theta, lo, hi.

    The resampled unit is a group: SciPy resamples the group indices (with replacement, as many
    as there are groups) and the statistic refits theta on the points of the picked groups.
    """
    loss, metric, groups = np.asarray(loss, float), np.asarray(metric, float), np.asarray(groups)
    point = threshold_fit(loss, metric, chance, higher_is_better)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    if len(members) < 2:
        # SciPy needs two observations to resample; every resample of one trial is that trial.
        lo = hi = point["theta"]
    else:
        def theta_of(picked):
            pick = np.concatenate([members[int(i)] for i in picked])
            return threshold_fit(loss[pick], metric[pick], chance, higher_is_better)["theta"]

        # Same draws as rng.choice(groups) per resample, and the same linear quantiles: the
        # interval is the one the hand-written loop gave. `rng=` needs SciPy >= 1.15.
        res = stats.bootstrap((np.arange(len(members)),), theta_of, n_resamples=samples, vectorized=False,
                              confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
    return {**point, "theta_lo": float(lo), "theta_hi": float(hi), "level": level, "samples": samples}


def spearman(x, y) -> float:
    """Spearman's rho (ties share their average rank); NaN when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # the NaN says it
        return float(stats.spearmanr(np.asarray(x, float), np.asarray(y, float)).statistic)


def loss_predicts_metric(loss, metric, groups, higher_is_better: bool = True) -> dict:
    """Leave-one-trial-out: mean absolute error of the monotone fit vs of the other trials' mean."""
    loss, metric, groups = np.asarray(loss, float), np.asarray(metric, float), np.asarray(groups)
    errors, baseline = [], []
    for g in np.unique(groups):
        held = groups == g
        if held.all() or (~held).sum() < 2:
            continue
        xs, fitted = monotone_fit(loss[~held], metric[~held], higher_is_better)
        errors.append(np.abs(predict_monotone(xs, fitted, loss[held]) - metric[held]))
        baseline.append(np.abs(metric[~held].mean() - metric[held]))
    if not errors:
        return {"mae": float("nan"), "mae_mean_baseline": float("nan"), "trials": 0}
    return {"mae": float(np.concatenate(errors).mean()), "mae_mean_baseline": float(np.concatenate(baseline).mean()),
            "trials": len(errors)}
