"""The shared gain/forgetting Pareto front (`rewarm best --pareto`, the report's trade-off plot): literal tables."""

import math

import pytest

from sweeps.results.best import rank
from sweeps.results.pareto import pareto_front
from sweeps.tracking.statuses import TrialStatus


@pytest.mark.parametrize("points, front", [
    ([], []),                                                  # no points, no front
    ([(0.3, 0.1)], [0]),                                       # a single point is its own front
    ([(0.1, 0.1), (0.3, 0.3), (0.2, 0.2)], [0, 2, 1]),         # all trade off; listed by forgetting
    ([(0.1, 0.3), (0.3, 0.1), (0.2, 0.2)], [1]),               # one point beats both others on both
    ([(0.1, 0.1), (0.3, 0.1)], [1]),                           # same forgetting, less gain: dominated
    ([(0.3, 0.2), (0.3, 0.1)], [1]),                           # same gain, more forgetting: dominated
    ([(0.2, 0.1), (0.2, 0.1), (0.1, 0.2)], [0, 1]),            # duplicates do not dominate each other
    ([(0.2, 0.2), (0.1, 0.2), (0.3, 0.1), (0.2, 0.2)], [2]),   # a duplicated point can still be dominated
    ([(0.5, 0.4), (0.1, 0.0), (0.4, 0.4), (0.3, 0.2)], [1, 3, 0]),  # (0.4, 0.4) loses to (0.5, 0.4)
])
def test_pareto_front_literal_table(points, front):
    assert pareto_front(points) == front


def test_a_nan_coordinate_neither_dominates_nor_is_dominated():
    nan = math.nan
    assert pareto_front([(0.3, 0.1), (nan, 0.5), (0.1, nan), (0.2, 0.2)]) == [0, 1, 2]


def test_best_pareto_keeps_the_completed_front_ranked_by_objective():
    trials = [{"trial_id": f"t{i}", "status": s, "objective": o, "gain": g, "forgetting": f}
              for i, (s, o, g, f) in enumerate([
                  (TrialStatus.COMPLETED, 0.1, 0.1, 0.0),
                  (TrialStatus.COMPLETED, 0.2, 0.3, 0.2),
                  (TrialStatus.COMPLETED, 0.0, 0.2, 0.3),       # dominated by t1
                  (TrialStatus.EARLY_STOPPED, 0.9, 0.9, 0.0),   # never on the front: not completed
                  (TrialStatus.COMPLETED, 0.2, 0.3, 0.2),       # a duplicate of t1: kept
              ])]
    assert [(r["rank"], r["trial_id"]) for r in rank(trials, pareto=True)] == [(1, "t1"), (2, "t4"), (3, "t0")]
