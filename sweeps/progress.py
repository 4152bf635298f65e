"""The sweep driver's Tune callback: MLflow logging for every trial, and live progress lines."""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from sweeps.tracking import STATUS_TAG, Tracker
from trainers.loop import BEST_MODEL_DIR
from trainers.worker import CURVES_FILE, REPORTS_FILE, CurveLog

KNOBS = ("warmup_frac", "max_lr", "replay_ratio", "schedule")


def trial_status(last_result: dict | None, errored: bool = False) -> str:
    """What became of a trial, from its last report."""
    if errored:
        return "failed"
    status = (last_result or {}).get("status")
    if status in ("diverged", "completed"):
        return status
    return "early_stopped"  # ended by the scheduler before its budget


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
        self._runs: dict[str, list] = {}  # trial id -> [mlflow run id, last logged step]
        self._checkpoints: dict[str, str] = {}
        self._ended: dict[str, str] = {}
        self._best: tuple[float, str, dict] | None = None
        self.timings: dict[str, dict] = {}  # per trial: driver-side timestamps (overhead benchmark)

    # ------------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info):
        self.timings.setdefault(trial.trial_id, {"start": time.time(), "results": [], "log_s": 0.0})
        self._ensure_run(trial)
        self.log(f"[rewarm] trial {trial.trial_id} started: {format_knobs(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        seen = time.time()
        if result.get("checkpoint_path"):
            self._checkpoints[trial.trial_id] = result["checkpoint_path"]
        self._sync(trial)
        t = self.timings.setdefault(trial.trial_id, {"start": seen, "results": [], "log_s": 0.0})
        t["results"].append({"step": result.get("step"), "reported": result.get("time/report"), "seen": seen})
        t["log_s"] += time.time() - seen

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, trial_status(trial.last_result), trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed", trials)

    # ------------------------------------------------------------------ helpers

    def _ensure_run(self, trial) -> list:
        if trial.trial_id not in self._runs:
            knobs = {k: trial.config[k] for k in KNOBS if k in trial.config}
            self._runs[trial.trial_id] = list(self.tracker.child_for_trial(trial.trial_id, knobs, self.params))
        return self._runs[trial.trial_id]

    def _sync(self, trial) -> None:
        entry = self._ensure_run(trial)
        run_dir = self.trials_root / trial.trial_id
        steps = CurveLog(run_dir / CURVES_FILE).read()
        reports = CurveLog(run_dir / REPORTS_FILE).read()
        entry[1] = self.tracker.log_progress(entry[0], steps, reports, entry[1])

    def _finish(self, trial, status: str, trials) -> None:
        self._sync(trial)
        self.timings.setdefault(trial.trial_id, {"results": [], "log_s": 0.0})["end"] = time.time()
        run_id = self._runs[trial.trial_id][0]
        final = dict(trial.last_result or {})
        artifacts = {}
        if trial.trial_id in self._checkpoints:
            artifacts["final"] = Path(self._checkpoints[trial.trial_id])
        best_dir = self.trials_root / trial.trial_id / BEST_MODEL_DIR
        if best_dir.exists():
            artifacts["best"] = best_dir
        self.tracker.finish_child(run_id, status, final, artifacts)
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

    def summaries(self) -> list[dict]:
        """Every trial of the sweep as MLflow records it (authoritative across resumes)."""
        out = []
        for run in self.tracker.child_runs():
            tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
            out.append({
                "trial_id": tags.get("rewarm.trial_id"), "run_id": run.info.run_id,
                "status": tags.get(STATUS_TAG),
                "knobs": {k.removeprefix("knob."): _param_value(v) for k, v in params.items() if k.startswith("knob.")},
                "metrics": {k.removeprefix("final/"): v for k, v in metrics.items() if k.startswith("final/")},
            })
        return out


def _param_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text
