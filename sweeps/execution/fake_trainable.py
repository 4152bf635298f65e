"""A fake trainable for testing schedulers and stoppers without a model (after Syne Tune).

It reports scripted objective curves against tokens, like a real trial's eval points, so
scheduler decisions can be checked in seconds on real Ray Tune. It lives in the package
(not in tests/) because Ray workers must be able to import it.
"""

from __future__ import annotations

import math

from ray import tune

from search_spaces.knobs import Knob
from trainers.report_point import DIVERGED_OBJECTIVE, ReportPoint, RunStatus


def scripted_objective(kind: str, i: int) -> float:
    """Objective at eval i (1-based) for each kind of scripted trial."""
    if kind in ("good", "diverge"):  # "diverge" is fine until it blows up
        return 1.0 + 0.05 * i
    if kind == "bad":
        return 0.2 + 0.01 * i
    if kind == "bump":  # re-warmed at high LR: the worst during warmup, the best at the end
        return -2.0 if i <= 3 else 1.0 + 0.2 * i
    raise ValueError(f"unknown scripted trial kind {kind!r}")


def fake_trainable(config: dict) -> None:
    """config: kind (good/bad/bump/diverge), evals, tokens_per_eval, optional warmup_tokens."""
    warmup = config.get("warmup_tokens", 0)  # reported like the real loop's, for per-trial grace
    for i in range(1, config["evals"] + 1):
        tokens = i * config["tokens_per_eval"]
        if config["kind"] == "diverge" and i >= 3:
            # Keeps reporting after diverging: only the driver's stopper can end it.
            tune.report(ReportPoint(tokens=tokens, step=i, objective=DIVERGED_OBJECTIVE, loss=math.nan,
                                    status=RunStatus.DIVERGED, warmup_tokens=warmup).to_result())
            continue
        tune.report(ReportPoint(tokens=tokens, step=i, objective=scripted_objective(config["kind"], i), loss=2.0,
                                warmup_tokens=warmup).to_result())


def fake_cpt_trainable(config: dict) -> None:
    """A scripted continual pre-training trade-off: a higher max LR learns more (gain) and
    forgets more; replay cuts forgetting at a small cost in gain. Reports like a real trial."""
    lr, replay = config[Knob.MAX_LR], config[Knob.REPLAY_RATIO]
    for i in range(1, config["evals"] + 1):
        progress = i / config["evals"]
        gain = progress * (1.0 + math.log10(lr / 1e-4)) * (1.0 - 0.3 * replay)
        forgetting = progress * (lr / 1e-3) * (1.0 - 0.9 * replay)
        tune.report(ReportPoint(tokens=i * config["tokens_per_eval"], step=i, gain=gain, forgetting=forgetting,
                                objective=gain - max(forgetting, 0.0), loss=2.0).to_result())
