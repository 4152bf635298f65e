"""The gain/forgetting Pareto front, shared by `rewarm best --pareto` and `rewarm report`."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (gain, forgetting) points on the Pareto front: more gain, less forgetting.

    Point j dominates point i when gain_j >= gain_i and forgetting_j <= forgetting_i with at
    least one of the two strict. The front is every point no other point dominates, so:
    - exact duplicates do not dominate each other: all copies of a front point are on it;
    - a point tied with another on one coordinate is off the front if it is worse on the other;
    - a NaN coordinate compares false, so such a point neither dominates nor is dominated;
    - one point is its own front; no points give an empty front.
    The indices are listed by forgetting, lowest first, then by index (only duplicates tie, as
    along the front gain rises strictly with forgetting); a NaN forgetting sorts last.
    """
    front = [i for i, (g, f) in enumerate(points)
             if not any(g2 >= g and f2 <= f and (g2 > g or f2 < f) for g2, f2 in points)]
    return sorted(front, key=lambda i: (math.isnan(points[i][1]), points[i][1], i))
