"""Which checkpoints a sweep keeps: a storage bill a large sweep can afford.

Without a policy every trial keeps its newest checkpoints whatever became of it; a 100-trial
sweep of a 7B model (about 100 GB per checkpoint with optimizer states) would hold about
20 TB. The policy, applied by the sweep driver whenever a trial ends and when a sweep is
resumed (sweeps/execution/callback.py):

    running trials    keep what the loop keeps (its newest checkpoints: a corrupt newest one
                      falls back to the one before)
    completed trials  keep the final checkpoint and the best model (`completed: final_and_best`),
                      or everything (`all`)
    failed trials     keep everything: `rewarm resume` retries them from their newest checkpoint
    diverged trials   reclaimed (`reclaim_stopped`): resuming would diverge again, never ranked
    stopped early     reclaimed (`reclaim_stopped`) once a completed trial ranks above them: Tune
                      never resumes a stopped trial, and `rewarm best` ranks every completed
                      trial first
    the sweep's best trial so far is never reclaimed (it loses only older checkpoints).

MLflow never links to a deleted path: a reclaimed checkpoint's link tag is rewritten to say
it was reclaimed before the directory goes (a copy logged as an artifact stays in MLflow's
artifact store). `plan_reclaim` is the pure decision; `reclaim` carries it out.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeps.tracking.statuses import TrialStatus

RECLAIMED_PREFIX = "reclaimed by the retention policy: "  # a link tag's value once its checkpoint is gone


class RetentionSettings(BaseModel):
    """Which checkpoints a sweep keeps (sweeps/tracking/retention.py)."""

    model_config = ConfigDict(extra="forbid")

    completed: Literal["final_and_best", "all"] = Field(
        "final_and_best", description="Completed trials: keep the final checkpoint and best model, or every checkpoint.")
    reclaim_stopped: bool = Field(
        True, description="Delete the checkpoints of diverged trials, and of trials stopped early once a completed "
                          "trial ranks above them (never the sweep's best).")


@dataclass(frozen=True)
class TrialFiles:
    """What one trial holds on storage."""

    trial_id: str
    status: TrialStatus
    checkpoints: tuple[Path, ...]  # oldest first (run_dir.list_checkpoints)
    best_model: Path | None = None
    linked: Path | None = None  # the final checkpoint MLflow links (the newest that verified), kept


def plan_reclaim(trials: list[TrialFiles], policy: RetentionSettings, protected: set[str]) -> dict[str, list[Path]]:
    """Per trial, the directories to delete (trials with nothing to delete are left out)."""
    any_completed = any(t.status == TrialStatus.COMPLETED for t in trials)
    plan = {}
    for t in trials:
        doomed: list[Path] = []
        if t.status == TrialStatus.COMPLETED and policy.completed == "final_and_best":
            keep = t.linked if t.linked in t.checkpoints else (t.checkpoints[-1] if t.checkpoints else None)
            doomed = [c for c in t.checkpoints if c != keep]
        elif t.trial_id in protected:  # the sweep's best so far loses nothing but older checkpoints
            continue
        elif policy.reclaim_stopped and (t.status == TrialStatus.DIVERGED
                                         or (t.status == TrialStatus.EARLY_STOPPED and any_completed)):
            doomed = list(t.checkpoints) + ([t.best_model] if t.best_model else [])
        if doomed:
            plan[t.trial_id] = doomed
    return plan


def reclaim(plan: dict[str, list[Path]], unlink) -> int:
    """Delete the planned directories; `unlink(trial_id, paths)` first rewrites the trial's MLflow
    link tags that name them (it raises while MLflow is down: then nothing of that trial goes).
    Returns the bytes freed."""
    freed = 0
    for trial_id, paths in plan.items():
        unlink(trial_id, [str(p) for p in paths])
        for path in paths:
            freed += dir_bytes(path)
            shutil.rmtree(path, ignore_errors=True)
    return freed


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path`; files that vanish while it walks (a running trial
    rotating its checkpoints) are skipped."""
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total
