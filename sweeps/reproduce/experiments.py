"""The papers' experiments at embedded scale, as sweeps built from one base spec.

Each experiment is a grid over the knobs (every point trained once to the full budget, no early
stopping: the findings are about whole curves). Learning rates are stated as multiples of the
model's own pre-training max LR (`SweepSpec.pretrain_lr`), which is how the papers state them
(Pythia-410M, pre-trained at 3e-4: 1.5e-4 / 3e-4 / 6e-4 are 0.5x / 1x / 2x). An experiment
several papers use (the LR x warmup grid, from-scratch runs) runs once for `all`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sweeps.config.loading import apply_override, validate_spec
from sweeps.config.spec import SweepSpec
from trainers.errors import UserError

BASE_SPEC = Path(__file__).resolve().parents[1] / "specs" / "reproduce.yaml"
LR_FACTORS = (0.5, 1.0, 2.0)  # Gupta et al.'s 1.5e-4 / 3e-4 / 6e-4 for a model pre-trained at 3e-4
WARMUPS = (0.0, 0.005, 0.01, 0.02)
REPLAYS = (0.0, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5)
FINAL_LR_FACTOR = 0.1  # the base's own schedule ends at 0.1x its max LR (cosine to 10%)


class ReproduceError(UserError, ValueError):
    """A reproduce request that cannot run (unknown paper, a clashing earlier sweep...)."""


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    knobs: dict  # knob -> list of values (a grid axis) or one value; max_lr as LR factors
    overrides: dict = field(default_factory=dict)  # dotted spec path -> value

    def spec(self, base: dict, prefix: str, tokens_per_trial: int | None) -> SweepSpec:
        """The sweep spec of this experiment: `base` (a raw spec mapping) with the grid set."""
        raw = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
        for key, value in self.overrides.items():
            apply_override(raw, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        apply_override(raw, f"name={prefix}-{self.name}")
        if tokens_per_trial is not None:
            apply_override(raw, f"budget.tokens_per_trial={tokens_per_trial}")
        probe = {**raw, "search_space": {k: v for k, v in raw.get("search_space", {}).items() if k != "algorithm"}}
        pretrain_lr = validate_spec(probe, source=str(BASE_SPEC)).pretrain_lr()
        points = 1
        for knob, values in self.knobs.items():
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if knob == "max_lr":
                values = [factor * pretrain_lr for factor in values]
            raw.setdefault("search_space", {}).setdefault("params", {})[knob] = values if len(values) > 1 else values[0]
            points *= len(values)
        raw["search_space"]["algorithm"] = "grid"
        raw.setdefault("budget", {})["num_trials"] = points
        return validate_spec(raw, source=f"reproduce experiment {self.name}")


EXPERIMENTS = {e.name: e for e in (
    Experiment("lr-warmup", "Gupta et al. 2023: warmup {0, 0.5, 1, 2}% x max LR {0.5, 1, 2}x, cosine to 0.1x, no replay",
               {"warmup_frac": WARMUPS, "max_lr": LR_FACTORS, "replay_ratio": 0.0, "schedule": "cosine"}),
    Experiment("same-data", "Gupta et al. 2023: continue on the upstream data itself, re-warmed (cosine) or at a "
                            "constant LR, at 1x and at the base's final 0.1x",
               {"warmup_frac": 0.01, "max_lr": (FINAL_LR_FACTOR, 1.0), "replay_ratio": 0.0,
                "schedule": ("cosine", "constant")},
               {"data.downstream.path": "toy:upstream"}),
    Experiment("from-scratch", "the same architecture from random weights, on the same tokens, at max LR {0.5, 1, 2}x",
               {"warmup_frac": 0.01, "max_lr": LR_FACTORS, "replay_ratio": 0.0, "schedule": "cosine"},
               {"model.init": "random"}),
    Experiment("replay", "Ibrahim et al. 2024: replay {0, 0.5, 1, 5, 10, 25, 50}%, re-warmed to 1x with 1% warmup, cosine",
               {"warmup_frac": 0.01, "max_lr": 1.0, "replay_ratio": REPLAYS, "schedule": "cosine"}),
)}

PAPERS = {
    "gupta2023": ("lr-warmup", "same-data", "from-scratch"),
    "ibrahim2024": ("replay",),
    "du2024": ("lr-warmup", "from-scratch"),
}
ALL = "all"


def experiments_for(paper: str) -> list[Experiment]:
    if paper == ALL:
        names = list(dict.fromkeys(n for p in PAPERS.values() for n in p))
    elif paper in PAPERS:
        names = list(PAPERS[paper])
    else:
        raise ReproduceError(f"unknown paper {paper!r}; choose one of {[*PAPERS, ALL]}")
    return [EXPERIMENTS[n] for n in names]


def papers_for(paper: str) -> list[str]:
    return list(PAPERS) if paper == ALL else [paper]


def load_base_spec(path: Path = BASE_SPEC, overrides: list[str] | None = None) -> dict:
    raw = yaml.safe_load(Path(path).read_text())
    for item in overrides or []:
        apply_override(raw, item)
    return raw
