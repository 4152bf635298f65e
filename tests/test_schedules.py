"""LR schedules against literal tables computed by hand (see the docstring of each case)."""

import pytest

from trainers.schedules import SCHEDULES, ScheduleConfig, lr_array, lr_at, lr_table

# cosine, 10 steps, warmup 20% (W=2), max 1, min 0.1:
#   warmup (s+1)/(W+1); then 0.1 + 0.45 (1 + cos(pi i / 7)), i = 0..7
COSINE = [0.333333, 0.666667, 1.0, 0.955436, 0.830570, 0.650134, 0.449866, 0.269430, 0.144564, 0.1]
# constant, 5 steps, warmup 20% (W=1)
CONSTANT = [0.5, 1.0, 1.0, 1.0, 1.0]
# wsd, 10 steps, warmup 10% (W=1), decay last 40% (4 steps): 0.1 + 0.9 (1 - sqrt(j/4)), j = 1..4
WSD = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.55, 0.363604, 0.220577, 0.1]
# infinite, 10 steps, warmup 10%, cosine cooldown over 2 steps to 0.5, hold, linear anneal over last 2 to 0.1
INFINITE = [0.5, 1.0, 0.75, 0.5, 0.5, 0.5, 0.5, 0.5, 0.3, 0.1]
# no warmup (Gupta et al.'s 0% arm): the first step already runs at max LR
COSINE_NO_WARMUP = [1.0, 0.55, 0.1]


@pytest.mark.parametrize("cfg,total,table", [
    (ScheduleConfig(kind="cosine", max_lr=1.0, warmup_frac=0.2), 10, COSINE),
    (ScheduleConfig(kind="constant", max_lr=1.0, warmup_frac=0.2), 5, CONSTANT),
    (ScheduleConfig(kind="wsd", max_lr=1.0, warmup_frac=0.1, decay_frac=0.4), 10, WSD),
    (ScheduleConfig(kind="infinite", max_lr=1.0, warmup_frac=0.1, cooldown_frac=0.2, anneal_frac=0.2,
                    constant_lr_ratio=0.5), 10, INFINITE),
    (ScheduleConfig(kind="cosine", max_lr=1.0, warmup_frac=0.0), 3, COSINE_NO_WARMUP),
], ids=["cosine", "constant", "wsd", "infinite", "cosine-no-warmup"])
def test_schedule_matches_literal_table(cfg, total, table):
    assert lr_table(cfg, total) == pytest.approx(table, abs=1e-6)
    assert lr_array(cfg, total).tolist() == pytest.approx(table, abs=1e-6)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("total", [1, 2, 7, 128, 1000])
@pytest.mark.parametrize("phases", [dict(warmup_frac=0.0), dict(warmup_frac=0.02), dict(warmup_frac=0.3),
                                    dict(warmup_frac=0.1, decay_frac=0.0, cooldown_frac=0.0, anneal_frac=0.0)])
def test_numpy_lr_array_equals_the_per_step_table_for_every_kind(kind, total, phases):
    cfg = ScheduleConfig(kind=kind, max_lr=3e-4, **phases)
    assert lr_array(cfg, total).tolist() == pytest.approx(lr_table(cfg, total), rel=1e-12, abs=1e-18)


def test_schedules_scale_with_max_lr():
    for kind in SCHEDULES:
        a = ScheduleConfig(kind=kind, max_lr=1.0, warmup_frac=0.05)
        b = ScheduleConfig(kind=kind, max_lr=3e-4, warmup_frac=0.05)
        assert [x * 3e-4 for x in lr_table(a, 50)] == pytest.approx(lr_table(b, 50), rel=1e-12)


def test_schedule_clamps_steps_and_rejects_empty_runs():
    cfg = ScheduleConfig(max_lr=1.0, warmup_frac=0.0)
    assert lr_at(-5, cfg, 10) == lr_at(0, cfg, 10)
    assert lr_at(99, cfg, 10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_at(0, cfg, 0)


def test_impossible_phase_lengths_are_rejected():
    with pytest.raises(ValueError, match="warmup_frac \\+ decay_frac"):
        ScheduleConfig(kind="wsd", max_lr=1.0, warmup_frac=0.5, decay_frac=0.6)
    with pytest.raises(ValueError):
        ScheduleConfig(kind="cosine", max_lr=0.0)
