"""`rewarm best`: rank a sweep's configs from MLflow alone (no Ray needed).

Ranking rules: completed trials first, by final objective; trials stopped early by the
scheduler after them (their objective is at fewer tokens, so not comparable); diverged
and failed trials are never ranked. `--max-forgetting E` keeps trials whose final
forgetting is at most E nats/token. `--pareto` lists the completed trials no other
completed trial beats on both gain (higher) and forgetting (lower).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sweeps.tracking import KIND_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG, TrackingError

RANKED_STATUSES = ("completed", "early_stopped")
TRIAL_METRICS = ("objective", "gain", "forgetting", "L_up", "L_down", "avg_loss", "tokens", "step", "best_objective")
COLUMNS = ("rank", "trial_id", "status", "objective", "gain", "forgetting", "L_up", "L_down",
           "warmup_frac", "max_lr", "replay_ratio", "schedule", "tokens")


class SweepNotFound(ValueError):
    pass


def open_client(uri: str):
    """A client for an existing store only: `best` must never create or change a store."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            raise TrackingError(f"no MLflow store at {db} (set --tracking-uri or MLFLOW_TRACKING_URI)")
    from sweeps.tracking import check_reachable

    check_reachable(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def load_sweep(client, sweep: str, experiment: str | None = None):
    """(parent run, [trial records]) of the newest sweep with that name."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SweepNotFound(f"experiment {experiment!r} does not exist in the tracking store")
        experiment_ids = [exp.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiment_ids, filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1) if experiment_ids else []
    if not parents:
        raise SweepNotFound(f"sweep {sweep!r} not found in the tracking store")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10000)
    return parent, [trial_record(r) for r in children]


def trial_record(run) -> dict:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    rec = {"trial_id": tags.get(TRIAL_TAG), "run_id": run.info.run_id, "status": tags.get(STATUS_TAG, "unknown")}
    for k, v in params.items():
        if k.startswith("knob."):
            rec[k.removeprefix("knob.")] = _value(v)
    for k in TRIAL_METRICS:
        if f"final/{k}" in metrics:
            rec[k] = metrics[f"final/{k}"]
    return rec


def rank(trials: list[dict], top: int | None = None, max_forgetting: float | None = None,
         pareto: bool = False) -> list[dict]:
    pool = [t for t in trials if t["status"] in RANKED_STATUSES and "objective" in t]
    if max_forgetting is not None:
        pool = [t for t in pool if t.get("forgetting", float("inf")) <= max_forgetting]
    if pareto:
        done = [t for t in pool if t["status"] == "completed"]
        pool = [t for t in done if not any(
            o is not t and o["gain"] >= t["gain"] and o["forgetting"] <= t["forgetting"]
            and (o["gain"] > t["gain"] or o["forgetting"] < t["forgetting"]) for o in done)]
    pool.sort(key=lambda t: (t["status"] != "completed", -t["objective"]))
    ranked = [{"rank": i + 1, **t} for i, t in enumerate(pool)]
    return ranked[:top] if top else ranked


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(rows, sort_keys=False)
    if not rows:
        return "(no ranked trials)"

    signed = {"objective", "gain", "forgetting"}

    def cell(column, v):
        if isinstance(v, float):
            if column == "tokens":
                return f"{v:.0f}"
            return f"{v:+.4f}" if column in signed else f"{v:.4g}"
        return str(v)

    table = [[cell(c, r.get(c, "")) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def export_spec(client, parent, trial: dict, path: Path) -> dict:
    """Write the sweep's spec with the trial's knobs fixed: `rewarm train FILE` reruns it."""
    import mlflow.artifacts

    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri.rstrip('/')}/spec.yaml") \
        if parent.info.artifact_uri else None
    if text is None:
        raise SweepNotFound("the sweep's parent run has no spec.yaml artifact to export from")
    raw = yaml.safe_load(text)
    raw["name"] = f"{raw['name']}-{trial['trial_id']}"
    raw.setdefault("search_space", {})["params"] = {k: trial[k] for k in ("warmup_frac", "max_lr", "replay_ratio", "schedule")}
    raw.setdefault("budget", {})["num_trials"] = 1
    path.write_text(f"# Exported by `rewarm best` from sweep {parent.data.tags.get(SWEEP_TAG)!r}, trial "
                    f"{trial['trial_id']} (objective {trial['objective']:+.4f}).\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return raw


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
