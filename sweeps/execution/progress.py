"""The sweep's live view: one status panel in a terminal, plain lines anywhere else.

In a terminal, `rich` keeps a panel at the bottom (trials running / ended by status, tokens
trained of the sweep's budget, best so far, elapsed and estimated time left) and prints the
sweep's event lines above it. When the output is a file or a pipe (CI, `tee`, a test), only
the event lines are printed, unchanged: logs stay greppable.

The numbers come from `SweepStats`, built by the sweep callback from Tune's events; the
estimate of time left is a pure function of them (`eta_s`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from search_spaces.knobs import format_knobs


@dataclass
class SweepStats:
    total_trials: int
    tokens_per_trial: int
    ended: dict[str, int] = field(default_factory=dict)  # status -> trials
    running: int = 0
    tokens_done: int = 0  # by every trial so far (a trial stopped early spends less than its share)
    running_tokens: int = 0  # the part of tokens_done trained by trials still running
    tokens_at_start: int = 0  # tokens_done when this driver started (a resumed sweep's earlier work)
    best: tuple[float, str, dict] | None = None  # (objective, trial id, knobs)
    started: float = field(default_factory=time.time)

    @property
    def budget_tokens(self) -> int:
        return self.total_trials * self.tokens_per_trial


def eta_s(stats: SweepStats, now: float) -> float | None:
    """Seconds left at the sweep's token rate so far, if every trial not yet ended ran its whole
    budget (an upper bound: early stops only shorten it). None before any token."""
    elapsed, trained = now - stats.started, stats.tokens_done - stats.tokens_at_start
    if trained <= 0 or elapsed <= 0:
        return None
    ended = sum(stats.ended.values())
    left = max(0, (stats.total_trials - ended) * stats.tokens_per_trial - stats.running_tokens)
    return left / (trained / elapsed)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def render_status(stats: SweepStats, now: float) -> str:
    """The panel's text (also what a test reads)."""
    ended = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in stats.ended.items() if n) or "none"
    best = (f"{stats.best[0]:+.4f} ({stats.best[1]}: {format_knobs(stats.best[2])})" if stats.best else "-")
    share = stats.tokens_done / stats.budget_tokens if stats.budget_tokens else 0.0
    return (f"trials  {stats.running} running | ended: {ended} | {stats.total_trials} planned\n"
            f"tokens  {stats.tokens_done:,} of {stats.budget_tokens:,} ({share:.0%})\n"
            f"best    {best}\n"
            f"time    {_clock(now - stats.started)} elapsed, at most {_clock(eta_s(stats, now))} left")


class ProgressView:
    """`line(text)` prints an event; `update(stats)` redraws the panel (terminal only)."""

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._live = self._console = None

    def __enter__(self):
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream, force_terminal=True)
            self._live = Live(console=self._console, refresh_per_second=2, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        return False

    def line(self, text: str) -> None:
        if self._live is not None:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, stats: SweepStats) -> None:
        if self._live is not None:
            from rich.panel import Panel

            self._live.update(Panel(render_status(stats, time.time()), title="rewarm sweep", expand=False))
