"""The MLflow side of one sweep: one parent run per sweep, one nested child run per trial.

All MLflow calls happen in the sweep driver (never in Train workers), so retries and
resumes cannot create duplicate runs: a trial's child run is found again by its tags
(`rewarm.sweep`, `rewarm.trial_id`) and continued. Curves are logged with `log_batch`
(one call per sync, not one per value). How far a run is logged is kept in two tags
(`rewarm.logged_step`, `rewarm.logged_report_step`), so a restarted driver continues exactly
where logging stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

from sweeps.tracking.retention import RECLAIMED_PREFIX
from sweeps.tracking.statuses import MLFLOW_RUN_STATUS, MLFLOW_SWEEP_STATUS, SweepStatus, TrialStatus
from sweeps.tracking.store import TrackingError, default_artifact_location
from trainers.report_point import SYSTEM_PREFIX, TASK_PREFIX, ReportPoint, is_finite

STATUS_TAG = "rewarm.status"  # a TrialStatus (trial runs) or SweepStatus (the parent run)
SWEEP_TAG = "rewarm.sweep"
TRIAL_TAG = "rewarm.trial_id"
KIND_TAG = "rewarm.kind"  # "sweep" (the parent run) or "trial"
SWEEP_KIND, TRIAL_KIND = "sweep", "trial"
RUN_KIND = "run"  # a `rewarm train` run: a trial of no sweep (tags rewarm.sweep = the spec's name, rewarm.trial_id = the run name)
KNOB_PARAM_PREFIX = "knob."  # a trial's knobs are MLflow params knob.<name>
# How far a trial's per-step records and its report points are logged (one mark each: the
# worker writes a step's record before that step's report, and a sync between the two writes
# must not count the report as logged).
LOGGED_STEP_TAG = "rewarm.logged_step"
LOGGED_REPORT_TAG = "rewarm.logged_report_step"
# Per step: the curves whose every step matters (the re-warming LR and the loss it moves).
# MLflow's SQL store costs ~0.2 ms per metric row; at the toy world's 0.15 s steps, each extra
# per-step curve would cost 0.13% of training time. So throughput, tokens and the realised
# replay share are logged once per report point (the loop aggregates them over its steps).
STEP_METRICS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm"}
EVAL_PREFIX = "eval/"  # a report point's evaluations: eval/<ReportPoint.EVAL_FIELDS>
BASE_PREFIX = "base/"  # the base reference on the parent run: base/L_up, base/task/<task>/<metric>
REPORT_TRAIN_METRICS = {"tokens": "train/tokens", "tokens_per_s": "train/tokens_per_s",
                        "replay_share": "train/replay_share"}
# A trial's final report point, as final/<name> metrics (what `rewarm best` ranks by).
FINAL_PREFIX = "final/"
FINAL_METRICS = (*ReportPoint.EVAL_FIELDS, "tokens", "step", "best_objective")
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: nests trial runs under the sweep's run
# MLflow 3's UI shows an experiment without this tag as a GenAI one (traces, "no data");
# a sweep is model training, which the UI calls "custom_model_development".
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
STUDY_TAG = "rewarm.optuna_study"  # on the parent run: the Optuna study's name and where it lives
STUDY_STORAGE_TAG = "rewarm.optuna_storage"  # (its URL without password: sweeps/tracking/study.py)
# On the parent run: the sweep's best trial so far by `rewarm best`'s rule (statuses.rank_key),
# updated as trials end, so MLflow users find the winner without Rewarm.
BEST_TRIAL_TAG, BEST_RUN_TAG = "rewarm.best_trial_id", "rewarm.best_run_id"
BEST_OBJECTIVE_TAG, BEST_CONFIG_TAG = "rewarm.best_objective", "rewarm.best_config"  # config: the knobs, JSON
BYTES_HELD_METRIC = "storage/bytes_held"  # parent run: what the sweep's trials hold on storage
SPEC_ARTIFACT = "spec.yaml"  # the sweep's spec on its parent run (`rewarm best --export` reads it)
_MAX_BATCH = 1000  # MLflow's limit on entries (metrics, params and tags) per log_batch call
_MAX_BATCH_PARAMS = 100  # and on params among them


class LoggedMarks(NamedTuple):
    """The last step of a trial's per-step records, and of its report points, in MLflow."""

    steps: int
    reports: int


class Tracker:
    """The MLflow side of one sweep. Cheap to pickle: the client is rebuilt on demand."""

    def __init__(self, uri: str, experiment: str, sweep: str, standalone: bool = False):
        """`standalone`: the runs are `rewarm train` runs (RUN_KIND, no parent run)."""
        self.uri, self.experiment, self.sweep = uri, experiment, sweep
        self.run_kind = RUN_KIND if standalone else TRIAL_KIND
        self._client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        # Params of runs this tracker created, not yet in MLflow: they ride on the run's next
        # log_batch (its first curve points, or its closing write) instead of a round trip of
        # their own. A run found again without some of them gets them at once (child_for_trial).
        self._unlogged_params: dict[str, list] = {}

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    def __setstate__(self, state):
        # Pickled before runs had kinds (a sweep's), or before params rode on the first write.
        self.__dict__.update({"run_kind": TRIAL_KIND, "_unlogged_params": {}, **state})

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------ experiment and parent

    def ensure_experiment(self) -> str:
        if self.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=default_artifact_location(self.uri),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                self.experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return self.experiment_id

    def find_parent(self):
        runs = self.client.search_runs(
            [self.ensure_experiment()],
            filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep}' and tags.`{KIND_TAG}` = '{SWEEP_KIND}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def start_parent(self, spec_yaml: str, params: dict, base_reference: dict, search_space: dict,
                     resume: bool, tags: dict[str, str] | None = None) -> str:
        """Create the sweep's parent run, or reopen it when resuming; `tags` are set either way."""
        from mlflow.entities import Metric, RunTag

        existing = self.find_parent()
        if existing is not None and resume:
            self.parent_run_id = existing.info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self.set_parent_tags({STATUS_TAG: str(SweepStatus.RUNNING), **(tags or {})})
            return self.parent_run_id
        if resume:  # a resumed sweep's trials belong under the parent run it started with
            raise TrackingError(f"cannot resume sweep {self.sweep!r}: experiment {self.experiment!r} at {self.uri} has "
                                f"no run of it; resume with the tracking URI it was started with (MLFLOW_TRACKING_URI)")
        if existing is not None:
            raise TrackingError(f"sweep {self.sweep!r} already exists in experiment {self.experiment!r}; "
                                f"continue it with `rewarm resume {self.sweep}` or choose another name")
        run = self.client.create_run(self.ensure_experiment(), run_name=self.sweep, tags={
            SWEEP_TAG: self.sweep, KIND_TAG: SWEEP_KIND, STATUS_TAG: str(SweepStatus.RUNNING)})
        self.parent_run_id = run.info.run_id
        now = _now_ms()
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(f"{BASE_PREFIX}{k}", v, now, 0) for k, v in _flatten(base_reference).items()],
            params=_params(params),
            tags=[RunTag("rewarm.search_space", json.dumps(search_space))]
            + [RunTag(k, v) for k, v in (tags or {}).items()])
        self.client.log_text(self.parent_run_id, spec_yaml, SPEC_ARTIFACT)
        self.client.log_dict(self.parent_run_id, {"base_reference": base_reference, "search_space": search_space},
                             "sweep.json")
        return self.parent_run_id

    def set_parent_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if self.parent_run_id is not None and tags:
            self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def unlink_checkpoints(self, run_id: str, paths: list[str]) -> None:
        """Rewrite the run's checkpoint link tags that name `paths` (about to be deleted)."""
        from mlflow.entities import RunTag

        tags = self.client.get_run(run_id).data.tags
        gone = [RunTag(key, f"{RECLAIMED_PREFIX}{value}") for key, value in tags.items()
                if key in (checkpoint_tag("final"), checkpoint_tag("best")) and value in paths]
        if gone:
            self.client.log_batch(run_id, tags=gone)

    def log_bytes_held(self, held: int, step: int) -> None:
        """The bytes the sweep's trials hold on storage (after a retention pass), on the parent run."""
        from mlflow.entities import Metric

        if self.parent_run_id is not None:
            self.client.log_batch(self.parent_run_id, metrics=[Metric(BYTES_HELD_METRIC, float(held), _now_ms(), step)])

    def finish_parent(self, status: SweepStatus, summary: dict | None = None) -> None:
        if self.parent_run_id is None:
            return
        if summary:
            self.client.log_dict(self.parent_run_id, summary, "summary.json")
        self.client.set_tag(self.parent_run_id, STATUS_TAG, str(status))
        self.client.set_terminated(self.parent_run_id, status=MLFLOW_SWEEP_STATUS.get(status, "FAILED"))

    # ------------------------------------------------------------------ children

    def child_runs(self) -> list:
        return self.client.search_runs(
            [self.ensure_experiment()],
            filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep}' and tags.`{KIND_TAG}` = '{TRIAL_KIND}'",
            max_results=10000)

    def close_orphans(self) -> list[str]:
        """Mark trial runs still `running` after the sweep ended as `interrupted` (never ranked)."""
        closed = []
        for run in self.child_runs():
            if run.data.tags.get(STATUS_TAG) == TrialStatus.RUNNING:
                self.client.set_tag(run.info.run_id, STATUS_TAG, str(TrialStatus.INTERRUPTED))
                self.client.set_terminated(run.info.run_id, status=MLFLOW_RUN_STATUS[TrialStatus.INTERRUPTED])
                closed.append(run.data.tags.get(TRIAL_TAG))
        return closed

    def child_for_trial(self, trial_id: str, knobs: dict, params: dict, search: bool = True) -> tuple[str, LoggedMarks]:
        """The trial's child run (found again after a retry or resume) and how far it is logged.

        `search=False`: the caller knows no run of the trial exists (a new sweep's new trial,
        on its first try). A new run's params go with its first `log_progress` or `finish_child`.
        """
        all_params = {**{f"{KNOB_PARAM_PREFIX}{k}": v for k, v in knobs.items()}, **params}
        found = search and self.client.search_runs(
            [self.ensure_experiment()],
            filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep}' and tags.`{TRIAL_TAG}` = '{trial_id}' "
                          f"and tags.`{KIND_TAG}` = '{self.run_kind}'",
            max_results=1)
        if found:
            run = found[0]
            if run.info.status != "RUNNING":  # ended once (failed, interrupted) and now run again
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, STATUS_TAG, str(TrialStatus.RUNNING))
            # Created just before an outage, a run may lack some of its params: log those only
            # (MLflow refuses a param logged again with another value).
            self._log_params(run.info.run_id, {k: v for k, v in all_params.items() if k not in run.data.params})
            tags = run.data.tags
            return run.info.run_id, LoggedMarks(int(tags.get(LOGGED_STEP_TAG, 0)), int(tags.get(LOGGED_REPORT_TAG, 0)))
        tags = {SWEEP_TAG: self.sweep, KIND_TAG: self.run_kind, TRIAL_TAG: trial_id,
                STATUS_TAG: str(TrialStatus.RUNNING), LOGGED_STEP_TAG: "0", LOGGED_REPORT_TAG: "0"}
        if self.run_kind == TRIAL_KIND:
            tags[PARENT_RUN_TAG] = self.parent_run_id
        run = self.client.create_run(self.ensure_experiment(), tags=tags, run_name=(
            f"{self.sweep}-{trial_id}" if self.run_kind == TRIAL_KIND else trial_id))
        if len(all_params) <= _MAX_BATCH_PARAMS:
            self._unlogged_params[run.info.run_id] = _params(all_params)
        else:  # more than one batch takes: on their own, now
            self._log_params(run.info.run_id, all_params)
        return run.info.run_id, LoggedMarks(0, 0)

    def _log_params(self, run_id: str, params: dict) -> None:
        items = _params(params)
        for i in range(0, len(items), _MAX_BATCH_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + _MAX_BATCH_PARAMS])

    def log_progress(self, run_id: str, steps: list[dict], reports: list[dict], marks: LoggedMarks) -> LoggedMarks:
        """Log per-step records and report points past their marks; return the new marks."""
        metrics, new_marks = progress_metrics(steps, reports, marks)
        if metrics:
            self._log_in_batches(run_id, metrics, marks_tags(new_marks))
        return new_marks

    def finish_child(self, run_id: str, status: TrialStatus, final: dict, artifacts: dict[str, Path],
                     files: list[Path] = (), tags: dict[str, str] | None = None,
                     progress: tuple[list[dict], list[dict], LoggedMarks] | None = None) -> LoggedMarks | None:
        """Close a trial's run: final metrics, status, checkpoints (dirs) and small files (e.g. decisions.jsonl).

        `progress` (steps, reports, marks): the trial's curve points not yet logged go in the same
        write as its final metrics and status (one round trip, not two); returns the marks after
        them. Every row carries its own record's time, so a close retried after an outage
        re-sends identical rows, which MLflow keeps once.
        """
        from mlflow.entities import RunTag

        point = ReportPoint.from_result(final)
        ts = _report_ms(point)
        # Only what the final report has: a trial that failed before reporting has no final step.
        values = {k: getattr(point, k) for k in FINAL_METRICS if k in final} | point.task_metrics()
        summary = [_metric(f"{FINAL_PREFIX}{k}", v, ts, point.step) for k, v in values.items() if is_finite(v)]
        metrics, new_marks = progress_metrics(*progress) if progress else ([], None)
        closing = [RunTag(STATUS_TAG, str(status))] + [
            RunTag(checkpoint_tag(name), str(path)) for name, path in artifacts.items()] + [
            RunTag(k, v[:5000]) for k, v in (tags or {}).items()]
        self._log_in_batches(run_id, metrics + summary, closing + (marks_tags(new_marks) if progress else []))
        for name, path in artifacts.items():
            if path.exists() and _dir_size(path) <= ARTIFACT_COPY_LIMIT_BYTES:
                self.client.log_artifacts(run_id, str(path), checkpoint_artifact(name))
        for path in files:
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=MLFLOW_RUN_STATUS.get(status, "FAILED"))
        return new_marks

    def _log_in_batches(self, run_id: str, metrics: list, tags: list) -> None:
        """One log_batch per MLflow's limit of entries; the run's unlogged params go with the
        first, the tags (the marks among them) with the last, so a failure mid-way re-logs,
        never skips."""
        params = self._unlogged_params.get(run_id, [])
        size = _MAX_BATCH - len(tags) - len(params)
        chunks = [metrics[i:i + size] for i in range(0, len(metrics), size)] or [[]]
        for i, chunk in enumerate(chunks):
            self.client.log_batch(run_id, metrics=chunk, params=params if i == 0 else [],
                                  tags=tags if i == len(chunks) - 1 else [])
            if i == 0:
                self._unlogged_params.pop(run_id, None)


def progress_metrics(steps: list[dict], reports: list[dict], marks: LoggedMarks) -> tuple[list, LoggedMarks]:
    """The MLflow rows of the per-step records and report points past `marks`, and the marks after them.

    Each row is stamped with its own record's time (a step's, a report's), never the time of
    the write: the same points logged again are the same rows.
    """
    metrics = []
    new_steps = [rec for rec in steps if rec["step"] > marks.steps]
    new_reports = [rep for rep in reports if rep["step"] > marks.reports]
    for rec in new_steps:
        ts = int(rec["time"] * 1000) if "time" in rec else _now_ms()
        metrics += [_metric(name, rec[key], ts, rec["step"]) for key, name in STEP_METRICS.items()
                    if key in rec and is_finite(rec[key])]
    for rep in new_reports:
        point = ReportPoint.from_result(rep)
        ts = _report_ms(point)
        values = {f"{EVAL_PREFIX}{k}": getattr(point, k) for k in ReportPoint.EVAL_FIELDS}
        values |= {name: getattr(point, key) for key, name in REPORT_TRAIN_METRICS.items()}
        values |= point.task_metrics()
        # MLflow's UI files system/* under System metrics.
        values |= {f"{SYSTEM_PREFIX}{k}": v for k, v in point.system.items()}
        metrics += [_metric(name, v, ts, point.step) for name, v in values.items() if is_finite(v)]
    return metrics, LoggedMarks(max([marks.steps] + [r["step"] for r in new_steps]),
                                max([marks.reports] + [r["step"] for r in new_reports]))


def marks_tags(marks: LoggedMarks) -> list:
    from mlflow.entities import RunTag

    return [RunTag(LOGGED_STEP_TAG, str(marks.steps)), RunTag(LOGGED_REPORT_TAG, str(marks.reports))]


def _metric(name: str, value, ts_ms: int, step: int):
    from mlflow.entities import Metric

    return Metric(name, float(value), ts_ms, step)


def _report_ms(point: ReportPoint) -> int:
    """A report point's rows' timestamp: when the worker made it (the time of writing, if unknown)."""
    return int(point.time_report * 1000) if point.time_report else _now_ms()


# Checkpoints above this size are linked (tag with their storage path), not copied.
ARTIFACT_COPY_LIMIT_BYTES = 64 * 2**20


def checkpoint_tag(kind: str) -> str:
    """The tag holding a trial's `kind` ("final" or "best") checkpoint's path on storage."""
    return f"rewarm.{kind}_checkpoint"


def checkpoint_artifact(kind: str) -> str:
    """Where a trial's `kind` checkpoint is copied among its run's artifacts (when small enough)."""
    return f"checkpoints/{kind}"


def best_trial_tags(trial_id: str, run_id: str, objective: float, knobs: dict) -> dict[str, str]:
    return {BEST_TRIAL_TAG: trial_id, BEST_RUN_TAG: run_id, BEST_OBJECTIVE_TAG: repr(float(objective)),
            BEST_CONFIG_TAG: json.dumps(knobs, sort_keys=True)}


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """{"L_up": 2.1, "tasks": {"t": {"accuracy": 0.3}}} -> {"L_up": 2.1, "task/t/accuracy": 0.3}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{TASK_PREFIX.rstrip('/') if k == 'tasks' and not prefix else k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif is_finite(v):
            out[key] = float(v)
    return out


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _params(params: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, _param_text(v)) for k, v in params.items()]


def _param_text(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text[:6000]


def _now_ms() -> int:
    return int(time.time() * 1000)
