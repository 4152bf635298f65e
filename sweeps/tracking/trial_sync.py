"""Logging trials into MLflow from their run dirs, riding out tracking outages.

Every curve point is on disk (curves.jsonl / reports.jsonl in the trial's run dir) before it
reaches MLflow, and a run's marks (`LoggedMarks`: how far its step records and its report
points are logged) only move after a successful write. So while the tracking server is down,
nothing is buffered in memory and nothing is lost: the next successful sync logs everything
after the marks. Only outages (`store.is_outage`) are ridden out; any other error is a bug
and raises.
"""

from __future__ import annotations

import time
from pathlib import Path

from sweeps.tracking.statuses import ENDED_STATUSES, RANKED_STATUSES, TrialStatus, rank_key, trial_status
from sweeps.tracking.store import check_reachable, is_outage
from sweeps.tracking.tracker import LoggedMarks, Tracker, best_trial_tags
from trainers.report_point import is_finite
from trainers.run_dir import CURVES_FILE, REPORTS_FILE, CurveLog, TailCursor

OUTAGE_RETRY_S = 5.0  # after a failed MLflow call, wait this long before the next attempt


class TrialSync:
    """The MLflow runs of a sweep's trials, kept in step with their run dirs.

    Pickled with the sweep's Tune callback when the Tuner is made (the client is not: `Tracker`
    rebuilds it). After `rewarm resume` it starts from that first state: each trial's run is
    found again by its tags, its marks come back from the run's tags, and its files are read
    from the top, the marks skipping what MLflow already has.
    """

    def __init__(self, tracker: Tracker, trials_root: Path, params: dict, log_interval_s: float, log=print,
                 new_sweep: bool = False):
        """`new_sweep`: no MLflow run of these trials can exist yet (a sweep this driver started), so
        a trial's first run is created without first searching MLflow for an earlier one."""
        self.tracker, self.trials_root, self.params, self.log = tracker, Path(trials_root), params, log
        self.new_sweep = new_sweep
        self._run_tries: set[str] = set()  # trials whose run this object has tried to create or find
        self._adopted: dict[str, str] = {}  # trial id -> MLflow run id, of trials closed by an earlier driver
        # One MLflow write per trial per interval, not per report: each write is a round trip
        # (~20 ms on SQLite, more to a server) whatever its size, and the curves wait on disk.
        self.log_interval_s = log_interval_s
        self.knobs: dict[str, dict] = {}
        self.log_s: dict[str, float] = {}  # per trial: seconds spent in MLflow calls (overhead benchmark)
        self._runs: dict[str, tuple[str, LoggedMarks]] = {}  # trial id -> (MLflow run id, marks)
        self._tails: dict[str, tuple[TailCursor, TailCursor]] = {}  # how far its curve files were read
        self._last_sync: dict[str, float] = {}
        self._pending: dict[str, tuple] = {}  # ended trials whose run is not yet closed in MLflow
        self._retry_at = 0.0
        self._in_outage = False
        self._best: tuple[tuple, str] | None = None  # (rank key, trial id) of the best ended trial
        self._best_tags: dict[str, str] | None = None  # the parent's best-trial tags, while not yet written
        self._closed: dict[str, TrialStatus] = {}  # the status each ended trial's run was closed with

    def __getstate__(self):
        return {**self.__dict__, "log": None}  # a log function may not pickle

    def __setstate__(self, state):
        self.__dict__.update({"_best": None, "_best_tags": None, "_closed": {}, "_run_tries": set(), "_adopted": {},
                              **state})
        self.new_sweep = False  # restored (`rewarm resume`): its trials' runs may exist
        self.log = self.log or print

    # ------------------------------------------------------------------ what the callback calls

    def start(self, trial_id: str, knobs: dict) -> None:
        self.knobs[trial_id] = knobs
        self.sync(trial_id)

    def sync_if_due(self, trial_id: str) -> None:
        if time.time() - self._last_sync.get(trial_id, 0.0) >= self.log_interval_s:
            self.sync(trial_id)
        self.flush_finished()

    def finish(self, trial_id: str, status: TrialStatus, final: dict, artifacts: dict[str, Path],
               files: list[Path], tags: dict[str, str]) -> None:
        """Queue the trial's closing write (final metrics, status, artifacts) and try it now."""
        self._pending[trial_id] = (status, final, artifacts, files, tags)
        self.flush_finished()

    @property
    def closed(self) -> dict[str, TrialStatus]:
        """Ended trials whose closing write (status, links) is in MLflow, with that status."""
        return {t: s for t, s in self._closed.items() if t not in self._pending}

    @property
    def best_trial_id(self) -> str | None:
        """The best closed trial by `rewarm best`'s rule."""
        return self._best[1] if self._best else None

    def run_id(self, trial_id: str) -> str:
        return self._runs[trial_id][0] if trial_id in self._runs else self._adopted[trial_id]

    def adopt_closed(self, summaries: list[dict]) -> None:
        """Take in trials closed by an earlier driver of this sweep (after `rewarm resume`: Tune
        restores this object as it was when the sweep started), from MLflow's records."""
        for t in summaries:
            if t["status"] in ENDED_STATUSES and t["trial_id"] not in self._pending:
                # Not among the runs this driver syncs: their points are all in MLflow. Should
                # Tune run one again (a failed trial), its run is found with its marks.
                self._adopted.setdefault(t["trial_id"], t["run_id"])
                self._closed.setdefault(t["trial_id"], TrialStatus(t["status"]))
                self._rank(t["trial_id"], t["status"], t["metrics"].get("objective"))

    @property
    def has_pending(self) -> bool:
        return bool(self._pending or self._best_tags)

    def last_report(self, trial_id: str) -> dict | None:
        """The trial's own last report point, from its run dir."""
        reports = CurveLog(self.trials_root / trial_id / REPORTS_FILE).read()
        return reports[-1] if reports else None

    def flush(self, timeout_s: float) -> list[str]:
        """At the end of a sweep: keep retrying until every trial is logged or time runs out.

        Returns the ids of trials whose MLflow runs are still incomplete (their curves are on disk).
        """
        deadline = time.time() + timeout_s
        while True:
            for trial_id in list(self._runs) + [t for t in self.knobs if t not in self._runs]:
                self.sync(trial_id)
            self.flush_finished()
            if not self.has_pending and not self._in_outage:
                return []
            if time.time() >= deadline:
                return sorted(self._pending)
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.time()) + 0.1)

    # ------------------------------------------------------------------ syncing

    def sync(self, trial_id: str, closing: tuple | None = None) -> bool:
        """Log what is on disk for the trial (and close its run, given its pending `closing`);
        False while tracking is unavailable."""
        if time.time() < self._retry_at:
            return False
        started = time.time()
        try:
            return self._guarded(lambda: self._sync_now(trial_id, closing))
        finally:
            self._last_sync[trial_id] = time.time()
            self._count(trial_id, self._last_sync[trial_id] - started)

    def _sync_now(self, trial_id: str, closing: tuple | None = None) -> None:
        """Log the trial's curve points past its marks; with `closing` (the pending close), in
        the same write as its final metrics and status, then close its run."""
        if self._in_outage:  # probe first: a sync with nothing new would not touch the server
            check_reachable(self.tracker.uri, timeout_s=2.0)
        if trial_id not in self._runs:
            # Only a new sweep's first try may skip the search: a try cut short by an outage
            # may have created the run already.
            search = not self.new_sweep or trial_id in self._run_tries
            self._run_tries.add(trial_id)
            self._runs[trial_id] = self.tracker.child_for_trial(trial_id, self.knobs.get(trial_id, {}), self.params,
                                                                search=search)
        run_id, marks = self._runs[trial_id]
        run_dir = self.trials_root / trial_id
        cursors = self._tails.get(trial_id, (TailCursor(), TailCursor()))
        steps, steps_cursor = CurveLog(run_dir / CURVES_FILE).read_new(cursors[0])
        reports, reports_cursor = CurveLog(run_dir / REPORTS_FILE).read_new(cursors[1])
        if closing is None:
            marks = self.tracker.log_progress(run_id, steps, reports, marks)
        else:
            status, final, artifacts, files, tags = closing
            marks = self.tracker.finish_child(run_id, status, final, artifacts, files=files, tags=tags,
                                              progress=(steps, reports, marks))
        # Moved only after MLflow took the points: after a failure they are read again.
        self._runs[trial_id] = (run_id, marks)
        self._tails[trial_id] = (steps_cursor, reports_cursor)

    def flush_finished(self) -> None:
        for trial_id in list(self._pending):
            status, final, artifacts, files, tags = self._pending[trial_id]
            latest = self.last_report(trial_id)  # the worker may have reported once more since
            if latest and latest.get("step", 0) > final.get("step", 0):
                final = latest
                status = trial_status(latest, errored=status == TrialStatus.FAILED)
            if not self.sync(trial_id, closing=(status, final, artifacts, files, tags)):
                return
            del self._pending[trial_id]
            self._closed[trial_id] = status
            self._note_ended(trial_id, status, final)
        if self._best_tags and self._guarded(lambda: self.tracker.set_parent_tags(self._best_tags)):
            self._best_tags = None

    def _note_ended(self, trial_id: str, status: TrialStatus, final: dict) -> None:
        """A closed trial that beats the best so far (`rewarm best`'s order) moves the parent's tags."""
        if self._rank(trial_id, status, final.get("objective")):
            self._best_tags = best_trial_tags(trial_id, self._runs[trial_id][0], final["objective"],
                                              self.knobs.get(trial_id, {}))

    def _rank(self, trial_id: str, status: str, objective) -> bool:
        """Take a closed trial into the best-so-far; whether it is the new best."""
        if status not in RANKED_STATUSES or not is_finite(objective):
            return False
        key = rank_key(status, objective)
        if self._best is not None and key >= self._best[0]:
            return False
        self._best = (key, trial_id)
        return True

    def _guarded(self, call) -> bool:
        """Run an MLflow call; an outage is noted (and retried later), anything else raises."""
        try:
            call()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._retry_at = time.time() + OUTAGE_RETRY_S
            if not self._in_outage:
                self._in_outage = True
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.log(f"[rewarm] MLflow unavailable ({first[:200]}); training continues, curves stay on disk "
                         f"and are logged when it is back")
            return False
        if self._in_outage:
            self._in_outage = False
            self.log("[rewarm] MLflow reachable again; logging caught up")
        return True

    def _count(self, trial_id: str, seconds: float) -> None:
        self.log_s[trial_id] = self.log_s.get(trial_id, 0.0) + seconds
