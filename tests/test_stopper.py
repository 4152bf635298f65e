"""The schedule-aware stopper's decisions on synthetic curves (pure rule), then on real Ray Tune.

Curves are objective-vs-tokens; one report per eval point of EVAL tokens, a budget of N evals.
"""

import json
import math

import pytest

from sweeps.decisions.stop_rule import CONTINUE, STOP, StopRule, StopRuleConfig
from trainers.run_dir import DECISIONS_FILE

EVAL = 1000
N = 12
MAX = N * EVAL


def rule(**kw) -> StopRule:
    cfg = dict(max_tokens=MAX, recovery_tokens=2 * EVAL, min_grace_tokens=EVAL, reduction_factor=2,
               smoothing=0.5, forecast=False, forecaster="linear")  # the law: tests/test_schedule_law.py
    cfg.update(kw)
    return StopRule(StopRuleConfig(**cfg))


def feed(r: StopRule, trial_id: str, curve, warmup_tokens: int = 0, status: str = "running"):
    """Report a curve (one objective per eval) until the rule says stop; returns the decisions."""
    decisions = []
    for i, value in enumerate(curve, 1):
        tokens = i * EVAL
        d = r.observe(trial_id, {"tokens": tokens, "objective": value, "loss": 2.0, "warmup_tokens": warmup_tokens,
                                 "status": "completed" if tokens >= MAX else status})
        decisions.append(d)
        if d.action == STOP:
            return decisions
    r.complete(trial_id, {"tokens": len(curve) * EVAL, "objective": curve[-1],
                          "status": "completed" if len(curve) * EVAL >= MAX else "running"})
    return decisions


def good(i):
    return 1.0 + 0.05 * i


def bad(i):
    return 0.2 + 0.01 * i


def bump(i, warmup_evals=3):
    # Re-warmed at a high LR: the worst trial during warmup and just after, the best at the end.
    return -2.0 if i <= warmup_evals + 1 else 1.0 + 0.2 * i


def curve(f):
    return [f(i) for i in range(1, N + 1)]


def test_rungs_are_geometric_from_the_first_eval():
    assert rule().rungs == [1000, 2000, 4000, 8000]
    assert rule(reduction_factor=3).rungs == [1000, 3000, 9000]


def test_bad_trial_is_stopped_at_a_rung_with_its_reason():
    r = rule()
    for k in range(2):
        assert feed(r, f"good{k}", curve(good))[-1].action == CONTINUE
    decisions = feed(r, "bad", curve(bad))
    last = decisions[-1]
    # Grace is recovery (2 evals) with no warmup: judged first at the 2000-token rung.
    assert last.action == STOP and last.tokens == 2 * EVAL and "rung 2000" in last.reason and "cutoff" in last.reason
    assert all(d.action == CONTINUE for d in decisions[:-1])


def test_bump_trial_is_protected_by_its_own_warmup_plus_recovery():
    r = rule()
    for k in range(2):
        feed(r, f"good{k}", curve(good))
    # Warmup 3 evals + recovery 2 evals: no judgment before 5000 tokens, and then it has recovered.
    decisions = feed(r, "bump", curve(bump), warmup_tokens=3 * EVAL)
    assert [d.action for d in decisions] == [CONTINUE] * N
    assert all("warmup + recovery" in d.reason for d in decisions[:4])
    # The control: the same curve with the warmup not reported is judged at its bump and stopped.
    control = rule()
    for k in range(2):
        feed(control, f"good{k}", curve(good))
    assert feed(control, "bump", curve(bump), warmup_tokens=0)[-1].action == STOP


def test_divergence_stops_at_once_even_inside_the_grace_window():
    r = rule()
    d = r.observe("x", {"tokens": EVAL, "objective": 1.0, "loss": math.nan, "warmup_tokens": 50 * EVAL})
    assert d.action == STOP and "diverged" in d.reason
    d = rule().observe("y", {"tokens": EVAL, "objective": -1000.0, "loss": 9.0, "status": "diverged"})
    assert d.action == STOP and "diverged" in d.reason


def test_smoothing_keeps_a_trial_through_one_noisy_eval():
    noisy = curve(good)
    noisy[3] = 0.85  # one bad eval (1.20 expected) right at the 4000-token rung
    for smoothing, expected in ((0.5, CONTINUE), (1.0, STOP)):  # 1.0 = judge the raw value
        r = rule(smoothing=smoothing)
        for k in range(3):
            feed(r, f"ref{k}", [0.8 + 0.05 * i for i in range(1, N + 1)])
        assert feed(r, "noisy", noisy)[-1].action == expected, smoothing


def test_dominated_forecast_stops_a_trial_that_passes_every_rung():
    # Finished trials where the value at every point predicts the final one (final = value + 1).
    r = rule(forecast=True, reduction_factor=8, forecast_min_trials=3, forecast_margin_sd=1.0)
    for k, level in enumerate((0.0, 0.5, 1.0, 1.5)):
        feed(r, f"ref{k}", [level + 0.01 * i for i in range(1, N)] + [level + 1.0])
    assert r.best_final == pytest.approx(2.5)
    # A trial that is above most rung cutoffs would finish at ~1.3 < 2.5: dominated.
    decisions = feed(r, "mid", [0.3 + 0.01 * i for i in range(1, N + 1)])
    assert decisions[-1].action == STOP and "forecast" in decisions[-1].reason
    assert decisions[-1].tokens == 2 * EVAL  # at the first point past its grace
    # One forecast to beat the best finished trial runs on, with the forecast as its reason.
    decisions = feed(r, "top", [2.0 + 0.01 * i for i in range(1, N)] + [3.0])
    assert decisions[-1].action == CONTINUE and any("can still reach" in d.reason for d in decisions)


def test_forecast_waits_for_enough_finished_trials():
    def run(levels):
        r = rule(forecast=True, reduction_factor=8, forecast_min_trials=3, forecast_margin_sd=1.0)
        for k, level in enumerate(levels):
            feed(r, f"ref{k}", [level] * (N - 1) + [level + 1.0])  # final = value + 1, best final 2.5
        return feed(r, "mid", [1.45] * N)  # above every rung cutoff; forecast final 2.45 < 2.5

    assert all(d.action == CONTINUE for d in run((1.0, 1.5)))  # two finished trials: no forecast yet
    stopped = run((1.0, 1.2, 1.5))[-1]
    assert stopped.action == STOP and "forecast final objective 2.4500" in stopped.reason


def test_reports_repeated_after_a_restart_change_nothing():
    r = rule()
    for k in range(2):
        feed(r, f"good{k}", curve(good))
    r.observe("t", {"tokens": EVAL, "objective": 1.2, "loss": 2.0})
    r.observe("t", {"tokens": 2 * EVAL, "objective": 1.3, "loss": 2.0})
    before = (r._trials["t"].smoothed, list(r._trials["t"].history), [list(v) for v in r._rung_values])
    d = r.observe("t", {"tokens": EVAL, "objective": -5.0, "loss": 2.0})  # replayed after a restart
    assert d.action == CONTINUE and d.repeat and "repeat" in d.reason
    assert (r._trials["t"].smoothed, r._trials["t"].history, r._rung_values) == before


def test_numpy_numbers_are_not_mistaken_for_divergence():
    import numpy as np

    d = rule().observe("n", {"tokens": EVAL, "objective": np.float32(1.0), "loss": np.float64(2.0)})
    assert d.action == CONTINUE and "diverged" not in d.reason


def test_scheduler_state_survives_a_driver_restart(tmp_path):
    """Tune restores a scheduler as pickled at the sweep's start; the rule's state comes from disk."""
    import pickle

    from sweeps.config.layout import STOPPER_STATE_FILE as STATE_FILE
    from sweeps.execution.schedulers import ScheduleAwareScheduler

    class T:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    cfg = StopRuleConfig(max_tokens=MAX, recovery_tokens=EVAL, min_grace_tokens=EVAL, reduction_factor=2)
    sched = ScheduleAwareScheduler(cfg, str(tmp_path / "trials"))
    pristine = pickle.dumps(sched)  # what tuner.pkl holds
    for k in range(2):
        for i, v in enumerate(curve(good), 1):
            sched.on_trial_result(None, T(f"good{k}"), {"tokens": i * EVAL, "objective": v, "loss": 2.0})
        sched.on_trial_complete(None, T(f"good{k}"), {"tokens": MAX, "objective": curve(good)[-1], "status": "completed"})
    sched.on_trial_result(None, T("half"), {"tokens": EVAL, "objective": 1.0, "loss": 2.0})
    assert (tmp_path / STATE_FILE).exists()

    restored = pickle.loads(pristine)  # the driver was killed; `rewarm resume` unpickles the scheduler
    # The interrupted trial's first point is replayed after its restart: not a new decision.
    assert restored.on_trial_result(None, T("half"), {"tokens": EVAL, "objective": 1.0, "loss": 2.0}) == "CONTINUE"
    rows = (tmp_path / "trials" / "half" / DECISIONS_FILE).read_text().splitlines()
    assert len(rows) == 1
    assert restored.rule.finished == 2 and restored.rule.best_final == pytest.approx(curve(good)[-1])
    # A bad trial is still judged against the rung values recorded before the restart.
    action = None
    for i, v in enumerate(curve(bad), 1):
        action = restored.on_trial_result(None, T("bad"), {"tokens": i * EVAL, "objective": v, "loss": 2.0})
        if action == "STOP":
            break
    assert action == "STOP" and i == 1  # judged at the first rung, against the two good trials
    # The control: without the saved state, the rung is empty and the same first report passes.
    blank = pickle.loads(pristine)
    blank.decisions_root = str(tmp_path / "elsewhere" / "trials")
    assert blank.on_trial_result(None, T("bad"), {"tokens": EVAL, "objective": bad(1), "loss": 2.0}) == "CONTINUE"


# ---------------------------------------------------------------------- on real Ray Tune


@pytest.mark.ray
def test_scheduler_on_real_tune_logs_every_decision(local_ray, tmp_path):
    from ray import tune

    from sweeps.execution.fake_trainable import fake_trainable
    from sweeps.execution.schedulers import ScheduleAwareScheduler

    evals, per_eval = 12, 512
    scheduler = ScheduleAwareScheduler(StopRuleConfig(max_tokens=evals * per_eval, recovery_tokens=2 * per_eval,
                                                      min_grace_tokens=per_eval, reduction_factor=2),
                                       decisions_root=str(tmp_path / "decisions"))
    kinds = ["good", "good", "bad", "bump", "diverge"]
    tuner = tune.Tuner(
        fake_trainable,
        param_space={"kind": tune.grid_search(kinds), "evals": evals, "tokens_per_eval": per_eval,
                     "warmup_tokens": 2 * per_eval},  # bump: -2 until eval 3; warmup 2 + recovery 2 evals
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(verbose=0, storage_path=str(tmp_path / "tune")),
    )
    results = tuner.fit()
    by_kind = {r.config["kind"] + str(i): r for i, r in enumerate(results)}
    assert by_kind["bump3"].metrics["tokens"] == evals * per_eval  # survives its bump and ends best
    assert by_kind["bad2"].metrics["tokens"] < evals * per_eval
    assert by_kind["diverge4"].metrics["tokens"] == 3 * per_eval  # its first diverged report
    for r in results:
        trial_id = r.metrics["trial_id"]
        rows = [json.loads(x) for x in (tmp_path / "decisions" / trial_id / DECISIONS_FILE).read_text().splitlines()]
        assert [row["tokens"] for row in rows] == [per_eval * (i + 1) for i in range(len(rows))]
        assert rows[-1]["tokens"] == r.metrics["tokens"] and all(row["reason"] for row in rows)
        assert (rows[-1]["action"] == STOP) == (r.metrics["tokens"] < evals * per_eval)


def test_stopper_state_written_by_another_version_is_a_one_line_user_error(tmp_path):
    import pickle
    import sys
    import types

    from sweeps.config.layout import STOPPER_STATE_FILE, StateIncompatible
    from sweeps.execution.schedulers import ScheduleAwareScheduler
    from trainers.errors import UserError

    gone = types.ModuleType("rewarm_module_of_another_version")

    class Old:
        pass

    Old.__module__, Old.__qualname__ = gone.__name__, "Old"
    gone.Old = Old
    sys.modules[gone.__name__] = gone
    try:
        (tmp_path / STOPPER_STATE_FILE).write_bytes(pickle.dumps((Old(), 0)))
    finally:
        del sys.modules[gone.__name__]
    sched = ScheduleAwareScheduler(StopRuleConfig(max_tokens=MAX, min_grace_tokens=EVAL), str(tmp_path / "trials"))
    with pytest.raises(StateIncompatible, match="another version of Rewarm") as info:
        sched.on_trial_result(None, types.SimpleNamespace(trial_id="t"), {"tokens": EVAL, "objective": 1.0, "loss": 2.0})
    assert isinstance(info.value, UserError)


def test_stopper_state_of_an_older_rule_without_the_law_is_refused_not_crashed_on(tmp_path):
    """A rule pickled before the schedule law unpickles without its attributes; resuming with it
    must be the one-line StateIncompatible, not an AttributeError at the first decision."""
    import pickle
    import types

    from sweeps.config.layout import STOPPER_STATE_FILE, StateIncompatible
    from sweeps.execution.schedulers import ScheduleAwareScheduler

    cfg = StopRuleConfig(max_tokens=MAX, min_grace_tokens=EVAL)
    old = StopRule(cfg)
    for name in ("law", "uses_law", "_ended", "_law_fitted_on"):
        delattr(old, name)
    (tmp_path / STOPPER_STATE_FILE).write_bytes(pickle.dumps((old, 0)))
    sched = ScheduleAwareScheduler(cfg, str(tmp_path / "trials"))
    with pytest.raises(StateIncompatible, match="lacks _ended, _law_fitted_on, law, uses_law"):
        sched.on_trial_result(None, types.SimpleNamespace(trial_id="t"), {"tokens": EVAL, "objective": 1.0, "loss": 2.0})

    (tmp_path / STOPPER_STATE_FILE).write_bytes(pickle.dumps((StopRule(cfg), 3)))  # this version's: restored
    again = ScheduleAwareScheduler(cfg, str(tmp_path / "trials"))
    again.on_trial_result(None, types.SimpleNamespace(trial_id="t"), {"tokens": EVAL, "objective": 1.0, "loss": 2.0})
    assert again.stopped == 3
