"""`rewarm forecast`'s pure parts (sweeps/results/forecast.py); the command itself runs on a real
sweep in tests/test_report.py."""

from pathlib import Path

import pytest

from sweeps.config.loading import load_spec
from sweeps.results.forecast import CANDIDATES_PER_AXIS, _candidates, _intervals
from sweeps.decisions.schedule_law import Forecast, Interval
from trainers.objective import BaseReference

SPECS = Path(__file__).resolve().parents[1] / "sweeps" / "specs"


def test_untried_candidates_grid_every_axis_of_the_space():
    spec = load_spec(SPECS / "demo.yaml", ["schedule=cosine"])
    grid = _candidates(spec)
    assert len(grid) == CANDIDATES_PER_AXIS ** 3  # warmup, max LR, replay continuous; schedule fixed
    lrs = sorted({c["max_lr"] for c in grid})
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[-1] == pytest.approx(1e-2 / 3)
    assert lrs[1] / lrs[0] == pytest.approx(lrs[2] / lrs[1])  # log-uniform: log-spaced
    replay = sorted({c["replay_ratio"] for c in grid})
    assert replay == pytest.approx([0.0, 0.0625, 0.125, 0.1875, 0.25])  # uniform: evenly spaced
    assert {c["schedule"] for c in grid} == {"cosine"}
    choice = load_spec(SPECS / "bench_sweep.yaml")
    assert len(_candidates(choice)) == 3 * 4 * 3  # choice lists as they are


def test_gain_and_forgetting_intervals_flip_and_shift_the_loss_intervals():
    base = BaseReference(L_up=2.0, L_down=3.0)
    fc = Forecast(L_up=Interval(2.1, 2.05, 2.2), L_down=Interval(2.5, 2.4, 2.7),
                  objective=Interval(0.4, 0.2, 0.5), coverage=0.9)
    out = _intervals(fc, base)
    assert out["gain"] == pytest.approx({"mean": 0.5, "lo": 0.3, "hi": 0.6})  # lower loss = more gain
    assert out["forgetting"] == pytest.approx({"mean": 0.1, "lo": 0.05, "hi": 0.2})
    assert out["objective"] == {"mean": 0.4, "lo": 0.2, "hi": 0.5}
