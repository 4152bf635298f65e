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


def threshold_fit(loss, metric, chance: float, higher_is_better: bool = True, weights=None) -> dict:
    """Least-squares broken stick with the plateau fixed at `chance`.

    metric = chance                      for loss >= theta
    metric = chance + slope (theta - loss) for loss <  theta    (slope >= 0; sign flipped for Brier)
    Returns theta, slope, and the fit's R^2 against the constant-at-chance model. `weights`
    (point multiplicities, >= 0) fit as if each point appeared that many times.

    Every distinct loss (and one above the largest) is a candidate theta; each candidate's
    best slope and error come from prefix sums over the points sorted by loss, so the whole
    search is O(n log n) (a sweep of 1,000 trials has ~10^5 points; the bootstrap refits it
    hundreds of times). Losses are centred first to keep the sums' cancellation small.
    """
    loss, metric = np.asarray(loss, float), np.asarray(metric, float)
    w = np.ones_like(loss) if weights is None else np.asarray(weights, float)
    return _threshold_sorted(*_sorted_by_loss(loss, metric, chance, higher_is_better), w_of=w, higher=higher_is_better)


def _sorted_by_loss(loss, metric, chance, higher_is_better):
    y = (metric - chance) if higher_is_better else (chance - metric)
    order = np.argsort(loss, kind="stable")
    return loss, y, order


def _threshold_sorted(loss, y, order, w_of, higher: bool) -> dict:
    keep = w_of[order] > 0
    idx = order[keep]
    w = w_of[idx]
    centre = float(np.average(loss[idx], weights=w))
    l, ys = loss[idx] - centre, y[idx]
    candidates = np.unique(np.concatenate([l, [l.max() + 1e-9]]))
    below = np.searchsorted(l, candidates, side="left")  # points with loss < theta: h = theta - loss > 0
    zero = np.zeros(1)
    s0, s1, s2 = (np.concatenate([zero, np.cumsum(a)]) for a in (w, w * l, w * l * l))
    sy, sly = np.concatenate([zero, np.cumsum(w * ys)]), np.concatenate([zero, np.cumsum(w * l * ys)])
    c, k = candidates, below
    hh = s0[k] * c * c - 2 * c * s1[k] + s2[k]
    hy = c * sy[k] - sly[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(hh > 1e-12, np.maximum(0.0, hy / hh), 0.0)
    sse_chance = float((w * ys * ys).sum())
    sse = sse_chance - 2 * slope * hy + slope * slope * hh
    best = int(np.flatnonzero(sse <= sse.min() + 1e-12 * max(1.0, abs(sse.min())))[0])  # ties: the lowest theta
    theta, slope_best = float(candidates[best] + centre), float(slope[best])
    h = np.clip(theta - loss[idx], 0.0, None)  # the chosen fit's error, computed directly
    sse_best = float((w * (ys - slope_best * h) ** 2).sum())
    return {"theta": theta, "slope": slope_best if higher else -slope_best,
            "r2_vs_chance": 1 - sse_best / sse_chance if sse_chance > 0 else 0.0}


def bootstrap_threshold(loss, metric, groups, chance: float, higher_is_better: bool = True,
                        samples: int = 200, seed: int = 0, level: float = 0.9) -> dict:
    """theta with a percentile bootstrap interval over groups (trials); returns theta, lo, hi.

    The resampled unit is a group: SciPy resamples the group indices (with replacement, as many
    as there are groups) and the statistic refits theta with each point weighted by how often
    its group was drawn (the same fit as on the drawn groups' points put together, without
    re-sorting them every time).
    """
    loss, metric, groups = np.asarray(loss, float), np.asarray(metric, float), np.asarray(groups)
    point = threshold_fit(loss, metric, chance, higher_is_better)
    names, group_of = np.unique(groups, return_inverse=True)
    if len(names) < 2:
        # SciPy needs two observations to resample; every resample of one trial is that trial.
        lo = hi = point["theta"]
    else:
        prepared = _sorted_by_loss(loss, metric, chance, higher_is_better)

        def theta_of(picked):
            counts = np.bincount(np.asarray(picked, int), minlength=len(names))
            return _threshold_sorted(*prepared, w_of=counts[group_of].astype(float), higher=higher_is_better)["theta"]

        # Same draws as rng.choice(groups) per resample, and the same linear quantiles. `rng=`
        # needs SciPy >= 1.15.
        res = stats.bootstrap((np.arange(len(names)),), theta_of, n_resamples=samples, vectorized=False,
                              confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
    return {**point, "theta_lo": float(lo), "theta_hi": float(hi), "level": level, "samples": samples}


def spearman(x, y) -> float:
    """Spearman's rho (ties share their average rank); NaN when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # the NaN says it
        return float(stats.spearmanr(np.asarray(x, float), np.asarray(y, float)).statistic)


def loss_predicts_metric(loss, metric, groups, higher_is_better: bool = True, max_folds: int = 50) -> dict:
    """Leave-one-trial-out: mean absolute error of the monotone fit vs of the other trials' mean.
    Beyond `max_folds` trials, the trials are dealt into `max_folds` folds (in order of their
    ids) and each fold is held out in turn: a thousand refits of 10^5 points would take
    minutes and tell nothing fifty do not."""
    loss, metric, groups = np.asarray(loss, float), np.asarray(metric, float), np.asarray(groups)
    names, group_of = np.unique(groups, return_inverse=True)
    if len(names) > max_folds:
        groups = group_of % max_folds
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
