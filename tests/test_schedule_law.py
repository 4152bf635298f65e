"""The schedule law (sweeps/decisions/schedule_law.py): its areas against literal tables, its
fit on synthetic curves drawn from the law with known parameters, the coverage of its
calibrated intervals on held-out synthetic trials, and the stopper's decisions with it."""

import math

import numpy as np
import pytest

from sweeps.decisions.schedule_law import (Curve, LawForecaster, TrialCurves, conformal_scale, fit_law,
                                           schedule_areas)
from sweeps.decisions.stop_rule import CONTINUE, STOP, ObjectiveOf, StopRule, StopRuleConfig, TrialSchedule
from trainers.objective import BaseReference, ObjectiveConfig
from trainers.schedules import ScheduleConfig, lr_table

T, EVERY = 64, 4  # steps per trial, steps between evals: 16 evals
BASE = BaseReference(L_up=2.0, L_down=3.0)
TRUE = {"alpha": 0.5, "s0": 3.0, "lam": 0.9}  # on the fitter's grids (OFFSETS, DECAYS); alpha between grid points


def test_areas_match_a_hand_computed_table():
    a = schedule_areas([1.0, 2.0, 2.0, 1.0], eta_ref=1.0, lam=0.0)
    # drops: base 0 -> 1 (-1), 1 -> 2 (-1), 2 -> 2 (0), 2 -> 1 (+1); lam 0: m = drops
    assert a.S1.tolist() == [0.0, 1.0, 3.0, 5.0, 6.0]
    assert a.S2.tolist() == [0.0, -1.0, -2.0, -2.0, -1.0]
    b = schedule_areas([1.0, 2.0, 2.0, 1.0], eta_ref=1.0, lam=0.5)
    # m = -1, -1.5, -0.75, 0.625
    assert np.allclose(b.S2, [0.0, -1.0, -2.5, -3.25, -2.625])
    c = schedule_areas([2.0, 2.0], eta_ref=2.0, lam=0.0, base_final_lr=2.0)  # no re-warming: no drop at all
    assert c.S1.tolist() == [0.0, 1.0, 2.0] and c.S2.tolist() == [0.0, 0.0, 0.0]


def _lrs(max_lr: float, warmup: float) -> tuple[float, ...]:
    return tuple(lr_table(ScheduleConfig(kind="cosine", max_lr=max_lr, warmup_frac=warmup), T))


def _law(lrs, L0, A, C, steps):
    a = schedule_areas(lrs, 1e-3, TRUE["lam"])
    s = np.asarray(steps)
    return L0 + A * (a.S1[s] + TRUE["s0"]) ** -TRUE["alpha"] - C * a.S2[s]


def synthetic_trial(max_lr: float, replay: float, warmup: float, rng, noise: float = 0.004) -> TrialCurves:
    """A trial of a world that follows the law: more LR learns more downstream and forgets more
    upstream, replay forgets less; the base point is exact, evals carry Gaussian noise."""
    lrs = _lrs(max_lr, warmup)
    steps = (0, *range(EVERY, T + 1, EVERY))
    g = math.log(max_lr / 1e-3)
    f0 = TRUE["s0"] ** -TRUE["alpha"]
    # downstream: falls by A_down * (f0 - f(S1)); upstream: rises (A < 0), less with replay
    A_down, C_down = 1.2 + 0.3 * g, 0.02
    A_up, C_up = -(0.5 + 0.15 * g) * (1 - 3 * replay), 0.03
    down = _law(lrs, BASE.L_down - A_down * f0, A_down, C_down, steps)
    up = _law(lrs, BASE.L_up - A_up * f0, A_up, C_up, steps)
    down[1:] += rng.normal(0, noise, len(steps) - 1)
    up[1:] += rng.normal(0, noise, len(steps) - 1)
    return TrialCurves(lrs, replay, steps, tuple(up), tuple(down))


def synthetic_sweep(n: int, seed: int) -> list[TrialCurves]:
    rng = np.random.default_rng(seed)
    return [synthetic_trial(float(rng.choice([3e-4, 1e-3, 3e-3])) * float(rng.uniform(0.8, 1.25)),
                            float(rng.choice([0.0, 0.05, 0.25])), float(rng.choice([0.0, 0.02])), rng)
            for _ in range(n)]


def test_fit_recovers_the_laws_shared_parameters_and_each_trials_terms():
    trials = synthetic_sweep(20, seed=1)
    params, terms = fit_law([t.curve("L_down") for t in trials], eta_ref=1e-3)
    assert params.lam == TRUE["lam"] and params.s0 == TRUE["s0"]
    assert params.alpha == pytest.approx(TRUE["alpha"], rel=0.1)  # the nearest of a geometric grid
    assert params.sigma == pytest.approx(0.004, rel=0.35)
    for trial, (L0, A, C) in zip(trials, terms):
        f0 = TRUE["s0"] ** -TRUE["alpha"]
        assert L0 + A * f0 == pytest.approx(BASE.L_down, abs=0.02)  # the curve passes through the base
        assert C == pytest.approx(0.02, abs=0.02)


def test_fewer_than_two_usable_curves_is_an_error():
    short = Curve((0, 4), (3.0, 2.9), _lrs(1e-3, 0.0))
    with pytest.raises(ValueError, match="at least 2 curves"):
        fit_law([short, short], eta_ref=1e-3)


def test_conformal_scale_uses_the_finite_sample_rank():
    z = [0.1 * k for k in range(1, 10)]  # 9 scores: rank ceil(10 * 0.9) = 9 -> the largest, 0.9
    assert conformal_scale(z, 0.9) == pytest.approx(0.9 / 1.6448536269514722)
    assert conformal_scale(z[:5], 0.9) is None  # rank 6 > 5 scores: no finite-sample guarantee


def objective(L_up, L_down):
    return ObjectiveOf(ObjectiveConfig(), BASE)(L_up, L_down)


def test_held_out_coverage_of_the_90_percent_interval_is_about_90_percent():
    # 120 held-out trials: a trial's prefixes share its noise, so coverage over 20 trials swings by 0.1
    trials = synthetic_sweep(160, seed=2)
    forecaster = LawForecaster(objective, coverage=0.9)
    forecaster.fit(trials[:40])
    inside = {"L_up": [], "L_down": [], "objective": []}
    for trial in trials[40:]:
        truth = {"L_up": trial.L_up[-1], "L_down": trial.L_down[-1]}
        truth["objective"] = objective(truth["L_up"], truth["L_down"])
        for n in range(1, len(trial.steps)):
            fc = forecaster.forecast(trial.prefix(n))
            for name in inside:
                iv = getattr(fc, name)
                inside[name].append(iv.lo <= truth[name] <= iv.hi)
    for name, hits in inside.items():
        assert 0.8 <= np.mean(hits) <= 0.99, (name, np.mean(hits))


def test_no_interval_before_enough_finished_trials():
    forecaster = LawForecaster(objective)
    trials = synthetic_sweep(2, seed=3)
    forecaster.fit(trials)
    assert not forecaster.ready and forecaster.forecast(trials[0]) is None


# ---------------------------------------------------------------------- the stopper with the law


def law_rule(**kw) -> StopRule:
    cfg = dict(max_tokens=T * 100, recovery_tokens=8 * 100, min_grace_tokens=EVERY * 100, reduction_factor=2,
               forecast=True, forecaster="law", rungs=False, objective=ObjectiveConfig())
    cfg.update(kw)
    return StopRule(StopRuleConfig(**cfg))


def feed(rule: StopRule, trial_id: str, trial: TrialCurves, warmup: float):
    """Report a synthetic trial point by point (100 tokens per step) until the rule stops it."""
    decisions = []
    schedule = TrialSchedule(ScheduleConfig(kind="cosine", max_lr=float(max(trial.lrs)), warmup_frac=warmup), T,
                             trial.replay)
    assert np.allclose(schedule.lrs, trial.lrs)  # the stopper rebuilds the same table from the config
    for step, up, down in zip(trial.steps[1:], trial.L_up[1:], trial.L_down[1:]):
        gain, forgetting = BASE.L_down - down, up - BASE.L_up
        result = {"tokens": step * 100, "step": step, "L_up": up, "L_down": down, "gain": gain,
                  "forgetting": forgetting, "objective": objective(up, down), "loss": down,
                  "warmup_tokens": round(warmup * T) * 100, "status": "completed" if step >= T else "running"}
        d = rule.observe(trial_id, result, schedule)
        decisions.append(d)
        if d.action == STOP:
            return decisions
    rule.complete(trial_id, result)
    return decisions


def test_law_keeps_a_bump_trial_that_ends_best_and_stops_a_dominated_one():
    rng = np.random.default_rng(4)
    rule = law_rule()
    for k, (lr, replay) in enumerate([(1.5e-4, 0.0), (1e-3, 0.05), (1e-3, 0.25), (3e-4, 0.25), (4e-3, 0.05),
                                      (6e-4, 0.0), (1.5e-3, 0.25)]):
        feed(rule, f"seed{k}", synthetic_trial(lr, replay, 0.0, rng), 0.0)
    assert rule.law.ready
    # High LR, heavy replay, no warmup: a deep re-warming rise on upstream first (worst of all
    # early), then the best final objective of the sweep.
    bump = synthetic_trial(3e-3, 0.25, 0.0, rng)
    early = objective(bump.L_up[1], bump.L_down[1])
    assert early < min(objective(t.L_up[1], t.L_down[1]) for t in [synthetic_trial(3e-4, 0.25, 0.0, rng)])
    decisions = feed(rule, "bump", bump, 0.0)
    assert all(d.action == CONTINUE for d in decisions), [d.reason for d in decisions if d.action == STOP]
    assert any("law forecast" in d.reason for d in decisions)
    # Low LR without replay: forgets and learns little; dominated, and stopped well before its end.
    dominated = synthetic_trial(2e-4, 0.0, 0.0, rng)
    decisions = feed(rule, "dominated", dominated, 0.0)
    assert decisions[-1].action == STOP and "law forecast" in decisions[-1].reason
    assert decisions[-1].tokens <= T * 100 // 2


def test_law_rule_state_pickles_with_its_fit():
    import pickle

    rng = np.random.default_rng(5)
    rule = law_rule()
    for k in range(5):
        feed(rule, f"t{k}", synthetic_trial(1e-3 * (k + 1) / 3, 0.05, 0.0, rng), 0.0)
    state = pickle.dumps(rule)
    assert len(state) < 64 * 1024  # schedules as configs: no LR table of any trial in the state
    again = pickle.loads(state)
    probe = synthetic_trial(1e-3, 0.05, 0.0, rng).prefix(4)
    assert again.law.forecast(probe) == rule.law.forecast(probe)


@pytest.mark.parametrize("seed", [4, 7])
def test_a_one_eval_loss_spike_does_not_stop_a_trial_the_law_keeps(seed):
    """+0.3 nats on both losses at one eval (75 noise sd; a loss spike, not divergence): the
    robust weights treat it as noise, and a stop voted at a surprising eval waits for the next."""
    import copy
    import dataclasses

    rng = np.random.default_rng(seed)
    rule = law_rule()
    for k, (lr, replay) in enumerate([(1.5e-4, 0.0), (1e-3, 0.05), (1e-3, 0.25), (3e-4, 0.25), (4e-3, 0.05),
                                      (6e-4, 0.0), (1.5e-3, 0.25)]):
        feed(rule, f"seed{k}", synthetic_trial(lr, replay, 0.0, rng), 0.0)
    bump = synthetic_trial(3e-3, 0.25, 0.0, rng)
    assert all(d.action == CONTINUE for d in feed(copy.deepcopy(rule), "clean", bump, 0.0))
    for at in (2, 3, 5, 8):
        spiked = dataclasses.replace(bump, L_up=tuple(v + 0.3 * (i == at) for i, v in enumerate(bump.L_up)),
                                     L_down=tuple(v + 0.3 * (i == at) for i, v in enumerate(bump.L_down)))
        decisions = feed(copy.deepcopy(rule), "spiked", spiked, 0.0)
        assert all(d.action == CONTINUE for d in decisions), (at, [d.reason for d in decisions if d.action == STOP])


def test_the_law_does_not_stop_a_trial_beyond_the_finished_trials_peak_lrs():
    rng = np.random.default_rng(4)
    rule = law_rule()
    for k, (lr, replay) in enumerate([(3e-4, 0.0), (1e-3, 0.05), (1e-3, 0.25), (3e-4, 0.25), (6e-4, 0.0)]):
        feed(rule, f"seed{k}", synthetic_trial(lr, replay, 0.0, rng), 0.0)
    far = synthetic_trial(1e-2, 0.0, 0.0, rng)  # 10x the highest finished peak LR
    assert rule.law.forecast(far.prefix(4)).extrapolated
    assert not rule.law.forecast(synthetic_trial(6e-4, 0.05, 0.0, rng).prefix(4)).extrapolated
    decisions = feed(rule, "far", far, 0.0)
    assert not any(d.action == STOP and "law" in d.reason for d in decisions)
    assert any("outside the finished trials' range" in d.reason for d in decisions)
