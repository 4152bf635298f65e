"""The sweep's live view: the status text and time-left estimate as literal tables, the rich
panel drawn in a (fake) terminal, plain lines everywhere else."""

import io

import pytest

from sweeps.execution.progress import ProgressView, SweepStats, eta_s, render_status


def _stats(**changes):
    base = dict(total_trials=4, tokens_per_trial=1000, ended={"completed": 1, "early_stopped": 1}, running=2,
                tokens_done=2500, running_tokens=600, tokens_at_start=0, started=100.0,
                best=(0.123456, "abc123", {"max_lr": 0.00123456, "schedule": "cosine"}))
    return SweepStats(**{**base, **changes})


@pytest.mark.parametrize("changes, now, expected", [
    ({}, 150.0, (2 * 1000 - 600) / (2500 / 50)),  # 2 trials not ended, 600 of their tokens done, 50 tokens/s
    ({"tokens_at_start": 2000}, 150.0, 1400 / (500 / 50)),  # a resumed sweep: only this driver's rate
    ({"tokens_done": 0}, 150.0, None),
    ({"ended": {"completed": 4}, "running": 0, "running_tokens": 0}, 150.0, 0.0),
])
def test_eta(changes, now, expected):
    assert eta_s(_stats(**changes), now) == (pytest.approx(expected) if expected is not None else None)


def test_status_text_reads_at_sensible_precision():
    text = render_status(_stats(), now=100.0 + 3725)
    assert "2 running | ended: 1 completed, 1 early stopped | 4 planned" in text
    assert "2,500 of 4,000 (62%)" in text
    assert "+0.1235 (abc123: max_lr=0.00123 schedule=cosine)" in text
    assert "1:02:05 elapsed" in text


def test_terminal_gets_the_panel_and_a_pipe_only_the_lines():
    terminal = io.StringIO()
    with ProgressView(terminal, live=True) as view:
        view.line("[rewarm] trial abc123 started")
        view.update(_stats())
    assert "trial abc123 started" in terminal.getvalue() and "rewarm sweep" in terminal.getvalue()
    pipe = io.StringIO()
    with ProgressView(pipe) as view:  # StringIO is not a terminal
        view.line("[rewarm] trial abc123 started")
        view.update(_stats())
    assert pipe.getvalue() == "[rewarm] trial abc123 started\n"
