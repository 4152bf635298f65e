"""`rewarm analyze`: downstream task performance vs pre-training loss over a whole sweep.

Every (trial, eval point) where tasks were scored gives one point (L_down, L_up, task metrics);
for each task and metric it fits performance as a function of L_down (`sweeps/results/loss_perspective.py`)
and reports the Spearman correlation, the threshold (the L_down below which the task leaves
chance, with a bootstrap interval over trials), and how well loss alone predicts the metric on
held-out trials of other LRs and replay ratios. Reads MLflow only (no Ray), and logs the table
and the points to the sweep's parent run.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from search_spaces.knobs import Knob
from sweeps.results import loss_perspective as lp
from sweeps.tracking.mlflow_compat import metric_histories
from sweeps.tracking.records import load_sweep
from sweeps.tracking.tracker import BASE_PREFIX, EVAL_PREFIX, SWEEP_TAG
from trainers.errors import UserError
from trainers.objective import BaseReference
from trainers.report_point import TASK_PREFIX
from trainers.task_data import TASK_METRICS

ANALYSIS_FILE = "analysis.json"


def collect_points(client, sweep: str, experiment: str | None = None, loaded: tuple | None = None) -> tuple:
    """(parent run, trials, points): one point per eval of a trial where tasks were scored.
    `loaded`: the sweep's (parent, trials) when the caller has read them already."""
    parent, trials = loaded or load_sweep(client, sweep, experiment)
    # The sweep's tasks are the base reference's (every trial scores the same ones).
    task_keys = [f"{TASK_PREFIX}{task}/{metric}" for task in sorted(base_tasks(parent)) for metric in TASK_METRICS]
    run_ids = [t["run_id"] for t in trials]
    histories = {key: metric_histories(client, run_ids, key)
                 for key in [f"{EVAL_PREFIX}L_down", f"{EVAL_PREFIX}L_up", *task_keys]}
    points = []
    for trial in trials:
        by_step: dict[int, dict] = defaultdict(dict)
        for key, by_run in histories.items():
            for m in by_run[trial["run_id"]]:
                by_step[m.step][key.removeprefix(EVAL_PREFIX)] = m.value
        for step, values in sorted(by_step.items()):
            if any(k.startswith(TASK_PREFIX) for k in values) and "L_down" in values:
                points.append({"trial_id": trial["trial_id"], "step": step, Knob.MAX_LR.value: trial.get(Knob.MAX_LR),
                               Knob.REPLAY_RATIO.value: trial.get(Knob.REPLAY_RATIO), "status": trial["status"], **values})
    return parent, trials, points


class MissingBaseReference(UserError, ValueError):
    """A sweep whose parent run has no base reference yet (its base model not measured)."""


def base_reference(parent) -> BaseReference:
    """The base model's losses and task metrics, from the parent run's base/ metrics."""
    metrics = parent.data.metrics
    if f"{BASE_PREFIX}L_up" not in metrics or f"{BASE_PREFIX}L_down" not in metrics:
        raise MissingBaseReference(f"sweep {parent.data.tags.get(SWEEP_TAG)!r}: its parent run has no base reference "
                                   f"(base/L_up, base/L_down) yet")
    return BaseReference(L_up=metrics[f"{BASE_PREFIX}L_up"], L_down=metrics[f"{BASE_PREFIX}L_down"],
                         tasks=base_tasks(parent))


def base_tasks(parent) -> dict[str, dict[str, float]]:
    """The base model's task metrics and chance, from the parent run's base/task/<name>/<metric>."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in parent.data.metrics.items():
        if key.startswith(BASE_PREFIX + TASK_PREFIX):
            name, metric = key.removeprefix(BASE_PREFIX + TASK_PREFIX).rsplit("/", 1)
            out[name][metric] = value
    return dict(out)


def chance_level(metric: str, chance_accuracy: float) -> float:
    """A uniform guess: accuracy and correct-choice probability = 1/n, Brier = 1 - 1/n."""
    return 1 - chance_accuracy if metric == "brier" else chance_accuracy


def analyze_points(points: list[dict], base: dict[str, dict[str, float]], bootstrap: int = 200) -> list[dict]:
    rows = []
    for task in sorted(base):
        chance_acc = base[task].get("chance_accuracy", 0.25)
        for metric in TASK_METRICS:
            key = f"{TASK_PREFIX}{task}/{metric}"
            pts = [p for p in points if key in p]
            if len(pts) < 3:
                continue
            loss = np.array([p["L_down"] for p in pts])
            value = np.array([p[key] for p in pts])
            groups = np.array([p["trial_id"] for p in pts])
            higher = metric != "brier"
            chance = chance_level(metric, chance_acc)
            fit = lp.bootstrap_threshold(loss, value, groups, chance, higher, samples=bootstrap)
            pred = lp.loss_predicts_metric(loss, value, groups, higher)
            rows.append({
                "task": task, "metric": metric, "points": len(pts), "trials": len(set(groups)),
                "chance": chance, "base": base[task].get(metric), "best": float(value.max() if higher else value.min()),
                "spearman_vs_L_down": lp.spearman(loss, value),
                "threshold_L_down": fit["theta"], "threshold_lo": fit["theta_lo"], "threshold_hi": fit["theta_hi"],
                "slope_below_threshold": fit["slope"], "threshold_fit_r2": fit["r2_vs_chance"],
                "loo_mae": pred["mae"], "loo_mae_mean_baseline": pred["mae_mean_baseline"],
                "L_down_range": [float(loss.min()), float(loss.max())],
            })
    return rows


def render_table(rows: list[dict]) -> str:
    if not rows:
        return "(no task evaluations in this sweep: add `tasks:` to the spec)"
    head = (f"{'task':16s} {'metric':12s} {'pts':>4s} {'chance':>6s} {'base':>6s} {'best':>6s} {'spearman':>8s} "
            f"{'threshold L_down (90% CI)':>26s} {'fit R2':>6s} {'LOO MAE':>8s} {'vs mean':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"{r['threshold_L_down']:.3f} ({r['threshold_lo']:.3f}-{r['threshold_hi']:.3f})"
        lines.append(f"{r['task']:16s} {r['metric']:12s} {r['points']:>4d} {r['chance']:>6.3f} "
                     f"{(r['base'] if r['base'] is not None else float('nan')):>6.3f} {r['best']:>6.3f} "
                     f"{r['spearman_vs_L_down']:>+8.3f} {ci:>26s} {r['threshold_fit_r2']:>6.2f} "
                     f"{r['loo_mae']:>8.4f} {r['loo_mae_mean_baseline']:>8.4f}")
    lines.append("threshold: the L_down below which the metric leaves chance (broken-stick fit, bootstrap over trials); "
                 "LOO MAE: error predicting held-out trials from loss alone vs predicting the mean")
    return "\n".join(lines)


def analyze_sweep(client, sweep: str, experiment: str | None = None, log_to_parent: bool = True,
                  loaded: tuple | None = None) -> dict:
    parent, trials, points = collect_points(client, sweep, experiment, loaded)
    rows = analyze_points(points, base_tasks(parent))
    result = {"sweep": sweep, "rows": rows, "points": points}
    if log_to_parent:
        client.log_dict(parent.info.run_id, result, ANALYSIS_FILE)
        client.log_text(parent.info.run_id, render_table(rows) + "\n", "analysis.txt")
    return result


def to_json(result: dict) -> str:
    return json.dumps(result["rows"], indent=2)
