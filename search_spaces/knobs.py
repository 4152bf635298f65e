"""The re-warming knobs: the names every layer uses for the values a trial varies.

A spec's `search_space.params`, Optuna's suggestions, a Tune trial's config, MLflow's
`knob.<name>` params and `rewarm best`'s columns all key them by these names.
"""

from __future__ import annotations

from enum import StrEnum


class Knob(StrEnum):
    """One knob of a trial. A StrEnum: members are the strings they name (dict keys, params)."""

    WARMUP_FRAC = "warmup_frac"  # share of the trial's steps spent re-warming the LR linearly
    MAX_LR = "max_lr"  # the LR re-warmed to, then decayed from
    REPLAY_RATIO = "replay_ratio"  # share of every step's sequences drawn from upstream data
    SCHEDULE = "schedule"  # the LR schedule's shape (trainers/schedules.py: SCHEDULES)


KNOBS: tuple[str, ...] = tuple(k.value for k in Knob)  # plain strings: safe as YAML and JSON keys


def knob_values(config: dict) -> dict[str, object]:
    """The knobs of a trial config (Tune's config, a trial record), in knob order, as plain keys."""
    return {k: config[k] for k in KNOBS if k in config}


def format_knobs(knobs: dict) -> str:
    """`warmup_frac=0.011 max_lr=0.00519 ...`: knob values at the precision a person reads
    (3 significant digits; the exact values are in MLflow's params)."""
    return " ".join(f"{k}={knobs[k]:.3g}" if isinstance(knobs[k], float) else f"{k}={knobs[k]}"
                    for k in KNOBS if k in knobs)
