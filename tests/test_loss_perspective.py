"""Loss-perspective fits on synthetic data with a known threshold, and literal tables.

The tables were written against the hand-written PAVA, ranks and bootstrap; they now check the
SciPy-backed code (isotonic_regression, spearmanr, bootstrap) and hold unchanged.
"""

import warnings

import numpy as np
import pytest

from sweeps.results.loss_perspective import (bootstrap_threshold, loss_predicts_metric, monotone_fit, predict_monotone,
                                     spearman, threshold_fit)


def synthetic(theta=2.0, chance=0.25, slope=0.4, noise=0.02, trials=8, points=12, seed=0):
    """Trials that each sweep the loss from 3.2 down to a trial-specific end (like different LRs)."""
    rng = np.random.default_rng(seed)
    loss, metric, groups = [], [], []
    for t in range(trials):
        end = 1.0 + 0.15 * t
        ls = np.linspace(3.2, end, points)
        m = chance + slope * np.clip(theta - ls, 0, None) + rng.normal(0, noise, points)
        loss += list(ls)
        metric += list(m)
        groups += [t] * points
    return np.array(loss), np.array(metric), np.array(groups)


def test_threshold_is_recovered_with_an_interval_that_covers_it():
    loss, metric, groups = synthetic()
    fit = bootstrap_threshold(loss, metric, groups, chance=0.25, samples=100)
    assert fit["theta"] == pytest.approx(2.0, abs=0.1)
    assert fit["theta_lo"] <= 2.0 <= fit["theta_hi"] and fit["theta_hi"] - fit["theta_lo"] < 0.5
    assert fit["slope"] == pytest.approx(0.4, abs=0.05) and fit["r2_vs_chance"] > 0.9


def test_brier_threshold_uses_the_flipped_direction():
    loss, metric, groups = synthetic()
    brier = 0.75 - (metric - 0.25)  # falls below the chance Brier once the task works
    fit = threshold_fit(loss, brier, chance=0.75, higher_is_better=False)
    assert fit["theta"] == pytest.approx(2.0, abs=0.1) and fit["slope"] < 0


def test_a_task_at_chance_everywhere_has_no_fit_to_speak_of():
    loss, _, _ = synthetic()
    flat = 0.25 + np.random.default_rng(1).normal(0, 0.02, len(loss))
    assert threshold_fit(loss, flat, chance=0.25)["r2_vs_chance"] < 0.2


def test_monotone_fit_literal_table():
    # Losses 4, 3, 2, 1 with metric 0.1, 0.3, 0.2, 0.5: (0.3, 0.2) violate and are pooled to 0.25.
    xs, fitted = monotone_fit([4, 3, 2, 1], [0.1, 0.3, 0.2, 0.5])
    assert list(xs) == [4, 3, 2, 1] and fitted == pytest.approx([0.1, 0.25, 0.25, 0.5])
    assert predict_monotone(xs, fitted, [4.5, 2.5, 0.5]) == pytest.approx([0.1, 0.25, 0.5])
    xs, fitted = monotone_fit([1, 2, 3], [0.2, 0.5, 0.4], higher_is_better=False)  # Brier: rises with loss
    assert fitted == pytest.approx([0.45, 0.45, 0.2])  # listed from high loss to low loss


def test_spearman_literal_table():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = ranks differences (0, 0, 1, -1): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    # Ties share their average rank: x ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    # A constant side has no rank correlation: NaN, and no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_bootstrap_threshold_literal_table():
    # One trial: every resample of it is that trial, so the interval is the point (chance down to 2.0, then 0.2/nat).
    loss = [3, 2.5, 2, 1.5, 1]
    metric = [0.25, 0.25, 0.25, 0.35, 0.45]
    fit = bootstrap_threshold(loss, metric, ["a"] * 5, chance=0.25)
    assert fit["theta"] == fit["theta_lo"] == fit["theta_hi"] == pytest.approx(2.0)
    assert fit["slope"] == pytest.approx(0.2) and fit["r2_vs_chance"] == pytest.approx(1.0)
    # The same fit, whatever the trials picked: a degenerate interval with two trials too.
    fit = bootstrap_threshold(loss * 2, metric * 2, ["a"] * 5 + ["b"] * 5, chance=0.25, samples=50)
    assert (fit["theta"], fit["theta_lo"], fit["theta_hi"], fit["samples"]) == pytest.approx((2.0, 2.0, 2.0, 50))


def test_loss_predicts_the_metric_of_held_out_trials():
    loss, metric, groups = synthetic()
    pred = loss_predicts_metric(loss, metric, groups)
    assert pred["trials"] == 8 and pred["mae"] < 0.5 * pred["mae_mean_baseline"]
    shuffled = np.random.default_rng(2).permutation(metric)  # loss carries no information
    assert loss_predicts_metric(loss, shuffled, groups)["mae"] > 0.7 * loss_predicts_metric(
        loss, shuffled, groups)["mae_mean_baseline"]
