"""Named search spaces over the re-warming knobs, and presets from the papers.

Knobs: `warmup_frac` (share of steps), `max_lr`, `replay_ratio` (share of each step's
sequences from upstream), `schedule` (cosine / constant / infinite / wsd).

Paper presets state learning rates for the paper's model (Pythia-410M, pre-trained with
max LR 3e-4). They are scaled to the spec's model by `model_pretrain_lr / 3e-4`, i.e.
re-warming to "1x" means re-warming to the LR the model was pre-trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from search_spaces.knobs import KNOBS, Knob
from search_spaces.params import Choice, Fixed, LogUniform, Uniform, bounds, scale
from trainers.schedules import SCHEDULES
PAPER_REFERENCE_LR = 3e-4  # Pythia-410M's pre-training max LR, the papers' reference


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    params: dict = field(default_factory=dict)
    lr_is_relative: bool = True  # max_lr values are in the paper's units and get scaled

    def resolved(self, model_pretrain_lr: float, overrides: dict | None = None) -> dict:
        """Concrete params for a model: scale LRs, then apply the spec's overrides (absolute)."""
        params = dict(self.params)
        if self.lr_is_relative:
            params[Knob.MAX_LR] = scale(params[Knob.MAX_LR], model_pretrain_lr / PAPER_REFERENCE_LR)
        params.update(overrides or {})
        validate_params(params)
        return params


def validate_params(params: dict) -> None:
    """Raise ValueError naming the knob if a parameter can take an impossible value."""
    missing = [k for k in KNOBS if k not in params]
    if missing:
        raise ValueError(f"search space lacks knobs {missing}")
    unknown = [k for k in params if k not in KNOBS]
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; knobs are {list(KNOBS)}")
    for knob, lo_ok, hi_ok in ((Knob.WARMUP_FRAC, 0.0, 1.0), (Knob.REPLAY_RATIO, 0.0, 1.0)):
        b = bounds(params[knob])
        if b is None or b[0] < lo_ok or b[1] > hi_ok:
            raise ValueError(f"{knob}: must lie in [0, 1], got {params[knob].describe()}")
    b = bounds(params[Knob.MAX_LR])
    if b is None or b[0] <= 0:
        raise ValueError(f"{Knob.MAX_LR}: must be > 0, got {params[Knob.MAX_LR].describe()}")
    sched = params[Knob.SCHEDULE]
    names = [sched.value] if isinstance(sched, Fixed) else getattr(sched, "values", None)
    if not names or any(n not in SCHEDULES for n in names):
        raise ValueError(f"{Knob.SCHEDULE}: must be one of {list(SCHEDULES)} (fixed or a choice), got {sched.describe()}")


REGISTRY: dict[str, SearchSpace] = {}


def register(space: SearchSpace) -> SearchSpace:
    REGISTRY[space.name] = space
    return space


def get(name: str) -> SearchSpace:
    if name not in REGISTRY:
        raise KeyError(f"unknown search space {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


register(SearchSpace(
    name="default",
    description="Continuous space around the paper ranges: warmup 0-2%, max LR 0.3x-3x, replay 0-25%, cosine.",
    params={
        "warmup_frac": Uniform(low=0.0, high=0.02),
        "max_lr": LogUniform(low=1e-4, high=1e-3),
        "replay_ratio": Uniform(low=0.0, high=0.25),
        "schedule": Fixed(value="cosine"),
    },
))

register(SearchSpace(
    name="gupta2023",
    description="Gupta et al. 2023 grid: warmup {0, 0.5, 1, 2}% x max LR {1.5e-4, 3e-4, 6e-4}, cosine to 0.1x, no replay.",
    params={
        "warmup_frac": Choice(values=[0.0, 0.005, 0.01, 0.02]),
        "max_lr": Choice(values=[1.5e-4, 3e-4, 6e-4]),
        "replay_ratio": Fixed(value=0.0),
        "schedule": Fixed(value="cosine"),
    },
))

register(SearchSpace(
    name="ibrahim2024",
    description="Ibrahim et al. 2024: replay {0, 0.5, 1, 5, 10, 25, 50}%, re-warm to 3e-4 with 1% warmup, cosine.",
    params={
        "warmup_frac": Fixed(value=0.01),
        "max_lr": Fixed(value=3e-4),
        "replay_ratio": Choice(values=[0.0, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5]),
        "schedule": Fixed(value="cosine"),
    },
))

register(SearchSpace(
    name="schedules",
    description="Schedule shapes at the paper LR range: cosine, constant, infinite, wsd x max LR 0.5x-2x, 1% warmup, 5% replay.",
    params={
        "warmup_frac": Fixed(value=0.01),
        "max_lr": LogUniform(low=1.5e-4, high=6e-4),
        "replay_ratio": Fixed(value=0.05),
        "schedule": Choice(values=list(SCHEDULES)),
    },
))

for _space in REGISTRY.values():  # a broken preset should fail at import, not mid-sweep
    validate_params(_space.params)
