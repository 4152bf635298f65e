"""The sweep driver's Tune callback: Tune's trial events into MLflow, and live progress lines.

The MLflow side (outage-tolerant, from the trials' run dirs) is `sweeps/tracking/trial_sync.py`;
this module turns Tune's hooks into its calls, picks each ended trial's artifacts, and prints
one line per trial start and end.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from search_spaces.knobs import format_knobs, knob_values
from sweeps.decisions.stop_rule import STOP
from sweeps.execution.progress import SweepStats
from sweeps.tracking.records import trial_record, trial_summary
from sweeps.tracking.retention import RetentionSettings, TrialFiles, dir_bytes, plan_reclaim, reclaim
from sweeps.tracking.statuses import ENDED_STATUSES, TrialStatus, trial_status
from sweeps.tracking.store import is_outage
from sweeps.tracking.tracker import Tracker
from sweeps.tracking.trial_sync import TrialSync
from trainers.run_dir import BEST_MODEL_DIR, DECISIONS_FILE, CurveLog, list_checkpoints
from trainers.checkpoint_files import linkable_artifacts


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


class SweepCallback(Callback):
    def __init__(self, tracker: Tracker, spec, trials_root: str, params: dict, log=print, new_sweep: bool = False):
        """`new_sweep`: the driver has just started this sweep (no trial of it has a run in MLflow)."""
        self.trials_root, self.log = Path(trials_root), log
        self.total = spec.budget.num_trials
        self.sync = TrialSync(tracker, self.trials_root, params, spec.tracking.log_interval_s, log=log,
                              new_sweep=new_sweep)
        self.retention = spec.retention
        self._checkpoints: dict[str, str] = {}  # checkpoint paths Tune reported (Ray Train trials)
        self._ended: dict[str, TrialStatus] = {}
        self._best: tuple[float, str, dict] | None = None
        self._timings: dict[str, dict] = {}  # per trial: driver-side timestamps (overhead benchmark)
        self._tokens: dict[str, int] = {}  # per trial: tokens trained so far (the live view)
        self._linked: dict[str, Path] = {}  # per trial: the final checkpoint MLflow links (retention keeps it)
        self.tokens_per_trial = spec.budget.tokens_per_trial
        self.progress = None  # a ProgressView, set by the driver (never pickled)
        self._progress_start = (time.time(), 0)

    def __getstate__(self):
        return {**self.__dict__, "log": None, "progress": None}  # a log function or a live view may not pickle

    def __setstate__(self, state):
        self.__dict__.update({"retention": RetentionSettings(), "_tokens": {}, "tokens_per_trial": 0, "_linked": {},
                              **state})  # pickled by a version before these existed
        self.log = self.log or print

    def bind(self, fresh: "SweepCallback") -> None:
        """Give a callback restored by Tuner.restore this driver's tracker, log, live view, paths
        (the sweep directory may have moved) and settings."""
        self.sync.tracker, self.sync.log, self.log = fresh.sync.tracker, fresh.log, fresh.log
        self.trials_root = self.sync.trials_root = fresh.trials_root
        self.retention, self.tokens_per_trial, self.total = fresh.retention, fresh.tokens_per_trial, fresh.total
        self.show_progress(fresh.progress)

    def show_progress(self, progress) -> None:
        """Draw the sweep's live view on `progress` (a ProgressView) from now on."""
        self.progress = progress
        self._progress_start = (time.time(), sum(self._tokens.values()))

    def _show(self, trials) -> None:
        if self.progress is None:
            return
        tokens = self._tokens
        running = [t.trial_id for t in trials if t.status == "RUNNING" and t.trial_id not in self._ended]
        counts = {str(s): list(self._ended.values()).count(s) for s in ENDED_STATUSES}
        started, at_start = self._progress_start
        self.progress.update(SweepStats(
            total_trials=self.total, tokens_per_trial=self.tokens_per_trial, ended=counts, running=len(running),
            tokens_done=sum(tokens.values()), running_tokens=sum(tokens.get(t, 0) for t in running),
            tokens_at_start=at_start, started=started,
            best=(self._best[0], self._best[1], knob_values(self._best[2])) if self._best else None))

    @property
    def timings(self) -> dict[str, dict]:
        """Per trial: start, each result's report and arrival times, end, and MLflow seconds (log_s)."""
        trials = list(self._timings) + [t for t in self.sync.log_s if t not in self._timings]
        return {t: {**self._timings.get(t, {"results": []}), "log_s": self.sync.log_s.get(t, 0.0)} for t in trials}

    def _trial_timings(self, trial_id: str, start: float | None = None) -> dict:
        entry = self._timings.setdefault(trial_id, {"results": []})
        if start is not None:
            entry.setdefault("start", start)
        return entry

    # ------------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info):
        self._trial_timings(trial.trial_id, start=time.time())
        self.sync.start(trial.trial_id, knob_values(trial.config))
        self.log(f"[rewarm] trial {trial.trial_id} started: {format_knobs(trial.config)}")
        self._show(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        seen = time.time()
        self._trial_timings(trial.trial_id, start=seen)["results"].append(
            {"step": result.get("step"), "reported": result.get("time/report"), "seen": seen})
        if result.get("checkpoint_path"):
            self._checkpoints[trial.trial_id] = result["checkpoint_path"]
        if result.get("tokens") is not None:
            self._tokens[trial.trial_id] = int(result["tokens"])
        self.sync.sync_if_due(trial.trial_id)
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # The trial's own last report (on disk) is authoritative: Tune's last_result can
        # miss the final report when the trainable returns right after making it.
        final = self.sync.last_report(trial.trial_id) or dict(trial.last_result or {})
        self._finish(trial, trial_status(final), trials, final)

    def on_trial_error(self, iteration, trials, trial, **info):
        final = self.sync.last_report(trial.trial_id) or dict(trial.last_result or {})
        self._finish(trial, trial_status(final, errored=True), trials, final)

    def on_step_begin(self, iteration, trials, **info):
        if self.sync.has_pending:
            self.sync.flush_finished()

    # ------------------------------------------------------------------ ending a trial

    def _finish(self, trial, status: TrialStatus, trials, final: dict) -> None:
        trial_id = trial.trial_id
        self._trial_timings(trial_id)["end"] = time.time()
        self.sync.knobs.setdefault(trial_id, knob_values(trial.config))
        decisions_file = self.trials_root / trial_id / DECISIONS_FILE
        self.sync.finish(trial_id, status, final, self._artifacts(trial_id), files=[decisions_file],
                         tags=stop_tags(decisions_file))
        self._ended[trial_id] = status
        if status == TrialStatus.COMPLETED and "objective" in final:
            if self._best is None or final["objective"] > self._best[0]:
                self._best = (final["objective"], trial_id, trial.config)
        self.log(self._progress_line(trial_id, status, trials, final))
        self.apply_retention()
        self._show(trials)

    def apply_retention(self) -> None:
        """Delete the checkpoints the spec's retention policy no longer keeps (sweeps/tracking/
        retention.py), for ended trials whose MLflow run is closed (with the status it was
        closed with), and log the bytes held. While MLflow is down nothing is deleted: its links
        could not be rewritten first. Never raises into Tune: a failure here must not fail the
        trial that just ended; it is said, and the next pass tries again."""
        try:
            files = [TrialFiles(t, status, tuple(list_checkpoints(self.trials_root / t)),
                                best if (best := self.trials_root / t / BEST_MODEL_DIR).exists() else None,
                                linked=self._linked.get(t))
                     for t, status in self.sync.closed.items()]
            best_trial = self.sync.best_trial_id
            plan = plan_reclaim(files, self.retention, protected={best_trial} if best_trial else set())
            freed = reclaim(plan, lambda t, paths: self.sync.tracker.unlink_checkpoints(self.sync.run_id(t), paths))
            self.sync.tracker.log_bytes_held(dir_bytes(self.trials_root), step=len(files))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            if not is_outage(exc):
                self.log(f"[rewarm] retention pass failed ({type(exc).__name__}: {str(exc)[:200]}); nothing more "
                         f"is deleted until the next one")
            return
        if plan:
            self.log(f"[rewarm] retention: reclaimed {sum(len(p) for p in plan.values())} checkpoint dirs of "
                     f"trials {', '.join(sorted(plan))} ({freed / 2**20:.1f} MiB)")

    def adopt_earlier_trials(self) -> None:
        """After `rewarm resume`: what earlier drivers closed, from MLflow (Tune restores this
        callback as it was when the sweep started), so retention and the best-trial tags see it."""
        self.sync.adopt_closed(self.summaries())

    def _artifacts(self, trial_id: str) -> dict[str, Path]:
        """The trial's final checkpoint and best model for MLflow (checkpoint_files.linkable_artifacts)."""
        artifacts, refused = linkable_artifacts(self.trials_root / trial_id, self._checkpoints.get(trial_id))
        for reason in refused:
            self.log(f"[rewarm] trial {trial_id}: not linking {reason}")
        if "final" in artifacts:
            self._linked[trial_id] = artifacts["final"]
        return artifacts

    def _progress_line(self, trial_id: str, status: TrialStatus, trials, final: dict) -> str:
        counts = {s: list(self._ended.values()).count(s) for s in ENDED_STATUSES}
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self._ended)
        line = (f"[rewarm] trial {trial_id} {status} at {final.get('tokens', 0)} tokens"
                + (f", objective {final['objective']:+.4f}" if "objective" in final else "")
                + f" | {len(self._ended)}/{self.total} ended ({counts[TrialStatus.COMPLETED]} completed, "
                  f"{counts[TrialStatus.EARLY_STOPPED]} stopped early, {counts[TrialStatus.DIVERGED]} diverged, "
                  f"{counts[TrialStatus.FAILED]} failed), {running} running")
        if self._best:
            line += f" | best {self._best[0]:+.4f} ({self._best[1]}: {format_knobs(self._best[2])})"
        return line

    # ------------------------------------------------------------------ end of the sweep

    def flush(self, timeout_s: float) -> list[str]:
        """Keep retrying MLflow until every trial is logged or time runs out; the unlogged ids."""
        return self.sync.flush(timeout_s)

    def summaries(self) -> list[dict]:
        """Every trial of the sweep as MLflow records it (authoritative across resumes)."""
        return [trial_summary(trial_record(run)) for run in self.sync.tracker.child_runs()]
