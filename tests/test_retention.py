"""The retention policy as a literal table: which directories each kind of trial loses."""

from pathlib import Path

import pytest

from sweeps.tracking.retention import RetentionSettings, TrialFiles, plan_reclaim
from sweeps.tracking.statuses import TrialStatus as S


def _trial(trial_id, status, n_checkpoints=2, best=True):
    root = Path("/runs") / trial_id
    return TrialFiles(trial_id, status, tuple(root / f"checkpoint_{i}" for i in range(n_checkpoints)),
                      root / "best_model" if best else None)


SWEEP = [_trial("done", S.COMPLETED), _trial("champ", S.COMPLETED), _trial("cut", S.EARLY_STOPPED),
         _trial("boom", S.DIVERGED), _trial("crash", S.FAILED), _trial("live", S.RUNNING)]
P = Path("/runs")


@pytest.mark.parametrize("policy, trials, expected", [
    # default: completed keep final + best; stopped early and diverged lose all
    (RetentionSettings(), SWEEP, {
        "done": [P / "done/checkpoint_0"], "champ": [P / "champ/checkpoint_0"],
        "cut": [P / "cut/checkpoint_0", P / "cut/checkpoint_1", P / "cut/best_model"],
        "boom": [P / "boom/checkpoint_0", P / "boom/checkpoint_1", P / "boom/best_model"]}),
    # no completed trial yet: a trial stopped early may still be the sweep's winner
    (RetentionSettings(), [_trial("cut", S.EARLY_STOPPED), _trial("boom", S.DIVERGED, best=False)], {
        "boom": [P / "boom/checkpoint_0", P / "boom/checkpoint_1"]}),
    (RetentionSettings(completed="all"), SWEEP, {
        "cut": [P / "cut/checkpoint_0", P / "cut/checkpoint_1", P / "cut/best_model"],
        "boom": [P / "boom/checkpoint_0", P / "boom/checkpoint_1", P / "boom/best_model"]}),
    (RetentionSettings(reclaim_stopped=False), SWEEP, {"done": [P / "done/checkpoint_0"],
                                                        "champ": [P / "champ/checkpoint_0"]}),
    # the sweep's best, stopped early (no completed trial outranks it): never reclaimed
    (RetentionSettings(), [_trial("champ", S.EARLY_STOPPED), _trial("done", S.COMPLETED)], {
        "done": [P / "done/checkpoint_0"]}),
    (RetentionSettings(), [_trial("one", S.COMPLETED, n_checkpoints=1)], {}),
])
def test_plan_reclaim(policy, trials, expected):
    assert plan_reclaim(trials, policy, protected={"champ"}) == expected


def test_unknown_policy_field_is_refused():
    with pytest.raises(ValueError, match="extra"):
        RetentionSettings(keep_everything=True)
