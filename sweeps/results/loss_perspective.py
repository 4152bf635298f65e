"""Task performance as a function of pre-training loss (Du et al. 2024), fitted over a sweep.

Pure functions over (loss, metric) points, where each point is one eval of one trial:
- `monotone_fit`: the best least-squares fit of the metric that only improves as loss falls
  (pool-adjacent-violators), i.e. "performance is a function of loss" with no shape assumed;
- `threshold_fit`: a broken stick: the metric sits at chance while loss >= theta and improves
  linearly below it; theta is "the loss below which the task leaves chance";
- `bootstrap_threshold`: theta's uncertainty, resampling whole trials (points of one trial are
  not independent);
- `spearman`: rank correlation of loss and metric;
- `loss_predicts_metric`: leave-one-trial-out error of the monotone fit against predicting
  the mean, i.e. how well loss alone predicts the metric on a trial with another LR and replay.
"""

from __future__ import annotations

import numpy as np


def monotone_fit(loss, metric, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sorted losses, fitted metric): non-increasing in loss for higher-is-better metrics."""
    loss, metric = np.asarray(loss, float), np.asarray(metric, float)
    order = np.argsort(-loss)  # from high loss to low loss the metric may only improve
    y = metric[order] if higher_is_better else -metric[order]
    # Pool adjacent violators for a non-decreasing sequence.
    values, weights, sizes = [], [], []
    for v in y:
        values.append(v)
        weights.append(1.0)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            v = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            s = sizes[-2] + sizes[-1]
            del values[-2:], weights[-2:], sizes[-2:]
            values.append(v)
            weights.append(w)
            sizes.append(s)
    fitted = np.repeat(values, sizes)
    return loss[order], fitted if higher_is_better else -fitted


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
    """theta with a bootstrap interval over groups (trials); returns theta, lo, hi."""
    loss, metric, groups = np.asarray(loss, float), np.asarray(metric, float), np.asarray(groups)
    point = threshold_fit(loss, metric, chance, higher_is_better)
    ids = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in ids}
    rng = np.random.default_rng(seed)
    thetas = []
    for _ in range(samples):
        pick = np.concatenate([members[g] for g in rng.choice(ids, size=len(ids), replace=True)])
        thetas.append(threshold_fit(loss[pick], metric[pick], chance, higher_is_better)["theta"])
    lo, hi = np.quantile(thetas, [(1 - level) / 2, (1 + level) / 2])
    return {**point, "theta_lo": float(lo), "theta_hi": float(hi), "level": level, "samples": samples}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else float("nan")


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
