"""Reading a sweep back from MLflow: its parent run and one flat record per trial."""

from __future__ import annotations

import json

from search_spaces.knobs import KNOBS
from sweeps.tracking.tracker import (FINAL_METRICS, FINAL_PREFIX, KIND_TAG, KNOB_PARAM_PREFIX, PARENT_RUN_TAG,
                                     SPEC_ARTIFACT, STATUS_TAG, SWEEP_KIND, SWEEP_TAG, TRIAL_TAG)
from sweeps.tracking.statuses import RANKED_STATUSES, rank_key
from trainers.errors import UserError
from trainers.report_point import is_finite

UNKNOWN_STATUS = "unknown"  # a run without a status tag (not written by Rewarm)


class SweepNotFound(UserError, ValueError):
    """No sweep (or experiment) of that name in the tracking store."""


def load_sweep(client, sweep: str, experiment: str | None = None, with_trials: bool = True):
    """(parent run, [trial records]) of the newest sweep with that name (no records unless
    `with_trials`)."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SweepNotFound(f"experiment {experiment!r} does not exist in the tracking store")
        experiment_ids = [exp.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    parent = _newest_parent(client, experiment_ids, sweep)
    if parent is None:
        raise SweepNotFound(f"sweep {sweep!r} not found in the tracking store")
    if not with_trials:
        return parent, []
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}'",
                                  max_results=10000)
    return parent, [trial_record(r) for r in children]


def spec_text_of(parent) -> str:
    """The sweep's spec YAML, as logged on its parent run."""
    import mlflow.artifacts

    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri.rstrip('/')}/{SPEC_ARTIFACT}") \
        if parent.info.artifact_uri else None
    if text is None:
        raise SweepNotFound(f"the sweep's parent run has no {SPEC_ARTIFACT} artifact (not a Rewarm sweep?)")
    return text


def newest_sweep_experiment(client) -> str | None:
    """The experiment id of the newest sweep in the store (None when there is none)."""
    parent = _newest_parent(client, [e.experiment_id for e in client.search_experiments()])
    return parent.info.experiment_id if parent else None


def _newest_parent(client, experiment_ids: list[str], sweep: str | None = None):
    """The newest sweep parent run in those experiments (of that sweep, if named), or None."""
    if not experiment_ids:
        return None
    where = f"tags.`{KIND_TAG}` = '{SWEEP_KIND}'" + (f" and tags.`{SWEEP_TAG}` = '{sweep}'" if sweep else "")
    parents = client.search_runs(experiment_ids, filter_string=where, order_by=["attributes.start_time DESC"],
                                 max_results=1)
    return parents[0] if parents else None


def trial_record(run) -> dict:
    """A trial run as one flat dict: trial_id, run_id, status, its knobs and its final metrics."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    rec = {"trial_id": tags.get(TRIAL_TAG), "run_id": run.info.run_id, "status": tags.get(STATUS_TAG, UNKNOWN_STATUS)}
    for k, v in params.items():
        if k.startswith(KNOB_PARAM_PREFIX):
            rec[k.removeprefix(KNOB_PARAM_PREFIX)] = _value(v)
    for k in FINAL_METRICS:
        if f"{FINAL_PREFIX}{k}" in metrics:
            rec[k] = metrics[f"{FINAL_PREFIX}{k}"]
    return rec


def trial_summary(record: dict) -> dict:
    """A trial record split into what identifies it, its knobs and its final metrics."""
    return {"trial_id": record["trial_id"], "run_id": record["run_id"], "status": record["status"],
            "knobs": {k: record[k] for k in KNOBS if k in record},
            "metrics": {k: record[k] for k in FINAL_METRICS if k in record}}


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def best_summary(summaries: list[dict]) -> dict | None:
    """The winner of `rewarm best`'s order (statuses.rank_key) among trial summaries, if any ranks."""
    ranked = [t for t in summaries if t["status"] in RANKED_STATUSES and is_finite(t["metrics"].get("objective"))]
    return min(ranked, key=lambda t: rank_key(t["status"], t["metrics"]["objective"])) if ranked else None
