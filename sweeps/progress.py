"""The sweep driver's Tune callback: MLflow logging for every trial, and live progress lines."""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from sweeps.stopper import DECISIONS_FILE, STOP
from sweeps.tracking import STATUS_TAG, LoggedMarks, Tracker, check_reachable
from trainers.loop import BEST_MODEL_DIR
from trainers.worker import CURVES_FILE, REPORTS_FILE, CurveLog, TailCursor

KNOBS = ("warmup_frac", "max_lr", "replay_ratio", "schedule")
OUTAGE_RETRY_S = 5.0  # after a failed MLflow call, wait this long before the next attempt


def trial_status(last_result: dict | None, errored: bool = False) -> str:
    """What became of a trial, from its last report."""
    if errored:
        return "failed"
    status = (last_result or {}).get("status")
    if status in ("diverged", "completed"):
        return status
    return "early_stopped"  # ended by the scheduler before its budget


def stop_tags(decisions_file: Path) -> dict[str, str]:
    """The schedule-aware stopper's verdict on a trial, as MLflow tags (the full log is an artifact)."""
    try:
        decisions = CurveLog(decisions_file).read()
    except ValueError:  # a line cut short by a killed driver: the artifact still has the rest
        return {"rewarm.stopper.reason": "decision log unreadable (cut short)"}
    if not decisions:
        return {}
    last = decisions[-1]
    stops = [d for d in decisions if d["action"] == STOP]
    verdict = stops[-1] if stops else last
    return {"rewarm.stopper.decisions": str(len(decisions)), "rewarm.stopper.last_action": verdict["action"],
            "rewarm.stopper.reason": f"at {verdict['tokens']} tokens: {verdict['reason']}"}


def format_knobs(knobs: dict) -> str:
    parts = []
    for k in KNOBS:
        v = knobs.get(k)
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class SweepCallback(Callback):
    def __init__(self, tracker: Tracker, spec, trials_root: str, log=print):
        from sweeps.tune_driver import flat_params

        self.tracker, self.trials_root, self.log = tracker, Path(trials_root), log
        self.total = spec.budget.num_trials
        self.params = flat_params(spec)
        self._runs: dict[str, list] = {}  # trial id -> [mlflow run id, LoggedMarks]
        self._checkpoints: dict[str, str] = {}
        self._ended: dict[str, str] = {}
        self._best: tuple[float, str, dict] | None = None
        self.timings: dict[str, dict] = {}  # per trial: driver-side timestamps (overhead benchmark)
        self._knobs: dict[str, dict] = {}
        self._finished_pending: dict[str, tuple] = {}  # ended trials whose run is not yet closed in MLflow
        self._retry_at = 0.0
        self._in_outage = False
        self._tails: dict[str, tuple[TailCursor, TailCursor]] = {}  # per trial: how far its curve files were read
        # One MLflow write per trial per interval, not per report: each write is a round trip
        # (~20 ms on SQLite, more to a server) whatever its size, and the curves wait on disk.
        self.log_interval_s = spec.tracking.log_interval_s
        self._last_sync: dict[str, float] = {}

    # ------------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info):
        self._trial_timings(trial.trial_id, start=time.time())
        self._knobs[trial.trial_id] = {k: trial.config[k] for k in KNOBS if k in trial.config}
        self._sync(trial.trial_id)
        self.log(f"[rewarm] trial {trial.trial_id} started: {format_knobs(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        seen = time.time()
        self._trial_timings(trial.trial_id, start=seen)["results"].append({"step": result.get("step"), "reported": result.get("time/report"), "seen": seen})
        if result.get("checkpoint_path"):
            self._checkpoints[trial.trial_id] = result["checkpoint_path"]
        if seen - self._last_sync.get(trial.trial_id, 0.0) >= self.log_interval_s:
            self._sync(trial.trial_id)
        self._flush_finished()

    def on_trial_complete(self, iteration, trials, trial, **info):
        # The trial's own last report (on disk) is authoritative: Tune's last_result can
        # miss the final report when the trainable returns right after making it.
        final = self._last_report(trial.trial_id) or dict(trial.last_result or {})
        self._finish(trial, trial_status(final), trials, final)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed", trials, self._last_report(trial.trial_id) or dict(trial.last_result or {}))

    def _last_report(self, trial_id: str) -> dict | None:
        reports = CurveLog(self.trials_root / trial_id / REPORTS_FILE).read()
        return reports[-1] if reports else None

    def on_step_begin(self, iteration, trials, **info):
        if self._finished_pending:
            self._flush_finished()

    # ------------------------------------------------------------------ MLflow, outage-tolerant
    #
    # Every curve point is on disk (curves.jsonl / reports.jsonl in the trial's run dir)
    # before it reaches MLflow, and a run's marks (tracking.LoggedMarks: how far its step
    # records and its report points are logged) only move after a successful write. So when
    # the tracking server is down, nothing is buffered in memory and nothing is lost: the next
    # successful sync logs everything after the marks.

    def __getstate__(self):
        # Tune pickles callbacks into the experiment state; a log function may not pickle.
        return {**self.__dict__, "log": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_tails", {})  # state saved before tails were kept
        self.__dict__.setdefault("_last_sync", {})  # ... or before syncs were spaced out
        self.__dict__.setdefault("log_interval_s", 10.0)
        for entry in self._runs.values():  # ... or when one mark covered steps and reports
            if isinstance(entry[1], int):
                entry[1] = LoggedMarks(entry[1], entry[1])
        self.log = self.log or print

    def _tracking_available(self) -> bool:
        return time.time() >= self._retry_at

    def _outage(self, exc: Exception) -> None:
        self._retry_at = time.time() + OUTAGE_RETRY_S
        if not self._in_outage:
            self._in_outage = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log(f"[rewarm] MLflow unavailable ({first[:200]}); training continues, curves stay on disk "
                     f"and are logged when it is back")

    def _recovered(self) -> None:
        if self._in_outage:
            self._in_outage = False
            self.log("[rewarm] MLflow reachable again; logging caught up")

    def _sync(self, trial_id: str) -> bool:
        """Log what is on disk for the trial; False while tracking is unavailable."""
        if not self._tracking_available():
            return False
        started = time.time()
        try:
            return self._sync_now(trial_id)
        finally:
            self._last_sync[trial_id] = time.time()
            self._count_logging(trial_id, self._last_sync[trial_id] - started)

    def _trial_timings(self, trial_id: str, start: float | None = None) -> dict:
        """A trial's driver-side timestamps (overhead benchmark): start, results, log_s, end."""
        entry = self.timings.setdefault(trial_id, {"results": [], "log_s": 0.0})
        if start is not None:
            entry.setdefault("start", start)
        return entry

    def _count_logging(self, trial_id: str, seconds: float) -> None:
        """Time this driver spent in MLflow for a trial (the overhead benchmark's logging share)."""
        self._trial_timings(trial_id)["log_s"] += seconds

    def _sync_now(self, trial_id: str) -> bool:
        try:
            if self._in_outage:  # probe first: a sync with nothing new would not touch the server
                check_reachable(self.tracker.uri, timeout_s=2.0)
            if trial_id not in self._runs:
                self._runs[trial_id] = list(self.tracker.child_for_trial(
                    trial_id, self._knobs.get(trial_id, {}), self.params))
            entry = self._runs[trial_id]
            run_dir = self.trials_root / trial_id
            cursors = self._tails.get(trial_id, (TailCursor(), TailCursor()))
            steps, steps_cursor = CurveLog(run_dir / CURVES_FILE).read_new(cursors[0])
            reports, reports_cursor = CurveLog(run_dir / REPORTS_FILE).read_new(cursors[1])
            entry[1] = self.tracker.log_progress(entry[0], steps, reports, entry[1])
            # Moved only after MLflow took the points: after a failure they are read again.
            self._tails[trial_id] = (steps_cursor, reports_cursor)
        except Exception as exc:  # noqa: BLE001 - any tracking failure is an outage to ride out
            self._outage(exc)
            return False
        self._recovered()
        return True

    def _finish(self, trial, status: str, trials, final: dict) -> None:
        self._trial_timings(trial.trial_id)["end"] = time.time()
        self._knobs.setdefault(trial.trial_id, {k: trial.config[k] for k in KNOBS if k in trial.config})
        artifacts = {}
        on_disk = sorted(p for p in (self.trials_root / trial.trial_id).glob("checkpoint_*") if p.is_dir())
        if on_disk:  # Ray names them by time: the last is the final checkpoint
            artifacts["final"] = on_disk[-1]
        elif trial.trial_id in self._checkpoints:
            artifacts["final"] = Path(self._checkpoints[trial.trial_id])
        best_dir = self.trials_root / trial.trial_id / BEST_MODEL_DIR
        if best_dir.exists():
            artifacts["best"] = best_dir
        self._finished_pending[trial.trial_id] = (status, final, artifacts)
        self._flush_finished()
        self._ended[trial.trial_id] = status
        if status == "completed" and "objective" in final:
            if self._best is None or final["objective"] > self._best[0]:
                self._best = (final["objective"], trial.trial_id, trial.config)
        counts = {s: list(self._ended.values()).count(s) for s in ("completed", "early_stopped", "diverged", "failed")}
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self._ended)
        line = (f"[rewarm] trial {trial.trial_id} {status} at {final.get('tokens', 0)} tokens"
                + (f", objective {final['objective']:+.4f}" if "objective" in final else "")
                + f" | {len(self._ended)}/{self.total} ended ({counts['completed']} completed, "
                  f"{counts['early_stopped']} stopped early, {counts['diverged']} diverged, {counts['failed']} failed), "
                  f"{running} running")
        if self._best:
            line += f" | best {self._best[0]:+.4f} ({self._best[1]}: {format_knobs(self._best[2])})"
        self.log(line)

    def _flush_finished(self) -> None:
        for trial_id in list(self._finished_pending):
            if not self._sync(trial_id):
                return
            status, final, artifacts = self._finished_pending[trial_id]
            latest = self._last_report(trial_id)  # the worker may have reported once more since
            if latest and latest.get("step", 0) >= final.get("step", 0):
                final = latest
                status = status if status == "failed" else trial_status(latest)
            decisions_file = self.trials_root / trial_id / DECISIONS_FILE
            started = time.time()
            try:
                self.tracker.finish_child(self._runs[trial_id][0], status, final, artifacts,
                                          files=[decisions_file], tags=stop_tags(decisions_file))
            except Exception as exc:  # noqa: BLE001
                self._outage(exc)
                return
            finally:
                self._count_logging(trial_id, time.time() - started)
            del self._finished_pending[trial_id]

    def flush(self, timeout_s: float) -> list[str]:
        """At the end of a sweep: keep retrying until every trial is logged or time runs out.

        Returns the ids of trials whose MLflow runs are still incomplete (their curves are on disk).
        """
        deadline = time.time() + timeout_s
        while True:
            for trial_id in list(self._runs) + [t for t in self._knobs if t not in self._runs]:
                self._sync(trial_id)
            self._flush_finished()
            if not self._finished_pending and not self._in_outage:
                return []
            if time.time() >= deadline:
                return sorted(self._finished_pending)
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.time()) + 0.1)

    def summaries(self) -> list[dict]:
        """Every trial of the sweep as MLflow records it (authoritative across resumes)."""
        from sweeps.best import TRIAL_METRICS, trial_record

        out = []
        for run in self.tracker.child_runs():
            rec = trial_record(run)
            out.append({"trial_id": rec["trial_id"], "run_id": rec["run_id"], "status": rec["status"],
                        "knobs": {k: rec[k] for k in KNOBS if k in rec},
                        "metrics": {k: rec[k] for k in TRIAL_METRICS if k in rec}})
        return out
