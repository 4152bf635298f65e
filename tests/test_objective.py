"""Gain, forgetting and the objectives against hand-computed values."""

import pytest

from trainers.objective import CONSTRAINT_PENALTY, BaseReference, ObjectiveConfig, score

BASE = BaseReference(L_up=2.0, L_down=3.0)


def test_joint_objective_hand_computed():
    s = score(L_up=2.25, L_down=2.5, base=BASE, cfg=ObjectiveConfig(kind="joint", forgetting_weight=2.0))
    assert s["gain"] == pytest.approx(0.5)
    assert s["forgetting"] == pytest.approx(0.25)
    assert s["objective"] == pytest.approx(0.5 - 2.0 * 0.25)
    assert s["avg_loss"] == pytest.approx(2.375)


def test_negative_forgetting_is_not_rewarded():
    s = score(L_up=1.9, L_down=2.9, base=BASE, cfg=ObjectiveConfig())
    assert s["forgetting"] == pytest.approx(-0.1)
    assert s["objective"] == pytest.approx(0.1)


def test_constrained_objective_ranks_infeasible_below_feasible():
    cfg = ObjectiveConfig(kind="constrained", max_forgetting=0.1)
    feasible = score(L_up=2.05, L_down=2.9, base=BASE, cfg=cfg)
    assert feasible["objective"] == pytest.approx(0.1)
    mild = score(L_up=2.2, L_down=1.0, base=BASE, cfg=cfg)  # huge gain but forgets 0.2 > 0.1
    worse = score(L_up=2.5, L_down=1.0, base=BASE, cfg=cfg)
    assert mild["objective"] == pytest.approx(-CONSTRAINT_PENALTY * 0.1 - 1.0)
    assert feasible["objective"] > mild["objective"] > worse["objective"]


def test_constrained_needs_a_bound():
    with pytest.raises(ValueError, match="max_forgetting"):
        ObjectiveConfig(kind="constrained")


def test_task_term_adds_the_task_gain_over_the_base_model():
    base = BaseReference(L_up=2.0, L_down=3.0, tasks={"qa": {"accuracy": 0.25, "correct_prob": 0.3, "brier": 0.8}})
    tasks = {"qa": {"accuracy": 0.5, "correct_prob": 0.45, "brier": 0.6}}
    cases = [("correct_prob", 2.0, 2.0 * 0.15), ("accuracy", 1.0, 0.25), ("brier", 3.0, 3.0 * 0.2)]  # brier: lower is better
    for metric, weight, term in cases:
        cfg = ObjectiveConfig(task="qa", task_metric=metric, task_weight=weight)
        s = score(L_up=2.25, L_down=2.5, base=base, cfg=cfg, tasks=tasks)
        assert s["task_gain"] == pytest.approx(term / weight)
        assert s["objective"] == pytest.approx(0.5 - 0.25 + term), metric


def test_task_term_needs_the_task_to_have_been_scored():
    cfg = ObjectiveConfig(task="qa")
    with pytest.raises(ValueError, match="was not evaluated"):
        score(L_up=2.0, L_down=2.5, base=BaseReference(L_up=2.0, L_down=3.0), cfg=cfg, tasks={})
