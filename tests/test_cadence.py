"""Every size derived from a spec, against a literal table (sweeps/config/cadence.py)."""

import pytest

from sweeps.config.cadence import Cadence, asha_grace_tokens, trial_cadence

# (batch, seq, tokens/trial, eval every, checkpoint every, task every, recovery) ->
# (tokens/step, steps, eval steps, checkpoint steps, task steps, recovery tokens)
TABLE = [
    ((16, 128, 262144, 16384, 65536, None, 0.1), (2048, 128, 8, 32, None, 26214)),  # the embedded default
    ((16, 128, 262144, 16384, 65536, 40000, 0.1), (2048, 128, 8, 32, 16, 26214)),  # task evals: 19.5 steps -> 2 evals
    ((8, 64, 12288, 2048, 2048, None, 0.0), (512, 24, 4, 4, None, 0)),  # tests' SMALL_RUN
    ((8, 64, 12288, 100, 100, 100, 0.5), (512, 24, 1, 1, 1, 6144)),  # intervals below a step round up to one
    ((4, 32, 1000, 300, 200, None, 0.1), (128, 7, 2, 2, None, 100)),  # checkpoints never more often than evals
]


@pytest.mark.parametrize("sizes, expected", TABLE)
def test_cadence_table(sizes, expected):
    c = trial_cadence(*sizes)
    assert (c.tokens_per_step, c.total_steps, c.eval_every, c.checkpoint_every, c.task_eval_every,
            c.recovery_tokens) == expected
    assert c.eval_tokens == c.eval_every * c.tokens_per_step
    assert c.max_tokens == c.total_steps * c.tokens_per_step


# (max warmup frac, recovery frac, tokens/trial, eval tokens) -> grace tokens (a report point)
GRACE = [
    (0.02, 0.1, 262144, 16384, 32768),  # 31457 tokens -> the next eval, 2 evals
    (0.0, 0.0, 262144, 16384, 16384),  # never before the first eval
    (0.5, 0.5, 1000, 100, 1000),
]


@pytest.mark.parametrize("warmup, recovery, tokens, every, grace", GRACE)
def test_asha_grace_table(warmup, recovery, tokens, every, grace):
    c = Cadence(tokens_per_step=every, total_steps=tokens // every, eval_every=1, checkpoint_every=1,
                task_eval_every=None, recovery_tokens=0)
    assert asha_grace_tokens(c, warmup, recovery, tokens) == grace


def test_the_spec_and_the_trial_config_use_the_one_cadence(resolved_small):
    from sweeps.config.resolve import trial_config

    spec = resolved_small.spec
    c = spec.cadence()
    cfg = trial_config(resolved_small, spec.fixed_knobs())
    assert (cfg.loop.total_steps, cfg.loop.eval_every, cfg.loop.checkpoint_every, cfg.loop.task_eval_every) == (
        c.total_steps, c.eval_every, c.checkpoint_every, c.task_eval_every)
    assert (spec.tokens_per_step, spec.steps_per_trial) == (c.tokens_per_step, c.total_steps)
