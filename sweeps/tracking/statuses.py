"""What became of a trial and of a sweep: the values of the `rewarm.status` tag.

A trial's status is derived from its run's own last report point (trainers/report_point.py:
RunStatus) and from how Tune ended it; `trial_status` is that rule, in one place.
"""

from __future__ import annotations

from enum import StrEnum

from trainers.report_point import ReportPoint, RunStatus


class TrialStatus(StrEnum):
    """A trial's status in MLflow (tag `rewarm.status` of its run)."""

    RUNNING = "running"  # in progress, or its driver died and `rewarm resume` will continue it
    COMPLETED = "completed"  # trained its whole token budget
    EARLY_STOPPED = "early_stopped"  # ended by the scheduler before its budget (a bad schedule)
    DIVERGED = "diverged"  # its loss blew up (non-finite or runaway)
    FAILED = "failed"  # its process kept failing after every retry
    INTERRUPTED = "interrupted"  # running when its sweep ended, never to continue (never ranked)
    PAUSED = "paused"  # a `rewarm train --stop-after-steps` run: checkpointed, continued by the same --run-name


# The statuses a trial ends with inside a sweep (INTERRUPTED is given after the sweep ends).
ENDED_STATUSES = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.DIVERGED, TrialStatus.FAILED)


class SweepStatus(StrEnum):
    """A sweep's status in MLflow (tag `rewarm.status` of its parent run)."""

    RUNNING = "running"
    COMPLETED = "completed"  # every trial ended and is fully logged
    INCOMPLETE_TRACKING = "incomplete_tracking"  # trials ended; some are not fully in MLflow (on disk)
    FAILED = "failed"  # the driver itself failed
    INTERRUPTED = "interrupted"  # stopped by the user (Ctrl-C); `rewarm resume` continues it


# MLflow's own run status for each of ours.
MLFLOW_RUN_STATUS = {
    TrialStatus.RUNNING: "RUNNING", TrialStatus.COMPLETED: "FINISHED", TrialStatus.EARLY_STOPPED: "FINISHED",
    TrialStatus.DIVERGED: "FAILED", TrialStatus.FAILED: "FAILED", TrialStatus.INTERRUPTED: "KILLED",
    TrialStatus.PAUSED: "KILLED",
}
MLFLOW_SWEEP_STATUS = {
    SweepStatus.RUNNING: "RUNNING", SweepStatus.COMPLETED: "FINISHED", SweepStatus.INCOMPLETE_TRACKING: "FAILED",
    SweepStatus.FAILED: "FAILED", SweepStatus.INTERRUPTED: "KILLED",
}


def trial_status(last_report: dict | None, errored: bool = False) -> TrialStatus:
    """What became of a trial that ended, from its last report point."""
    if errored:
        return TrialStatus.FAILED
    status = ReportPoint.from_result(last_report).status if last_report else None
    if status == RunStatus.DIVERGED:
        return TrialStatus.DIVERGED
    if status == RunStatus.COMPLETED:
        return TrialStatus.COMPLETED
    if status == RunStatus.STOPPED:
        return TrialStatus.PAUSED
    return TrialStatus.EARLY_STOPPED  # ended by the scheduler before its budget


# The statuses `rewarm best` ranks, and its order: completed trials by final objective, then
# trials stopped early (their objective is at fewer tokens, so never above a completed one).
# Diverged and failed trials are never ranked. The sweep's live "best" tags use the same rule.
RANKED_STATUSES = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED)


def rank_key(status: str, objective: float) -> tuple[bool, float]:
    """Sort key of a ranked trial: smaller is better."""
    return status != TrialStatus.COMPLETED, -objective
