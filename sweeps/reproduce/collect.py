"""Read an experiment's sweep back from MLflow as the curves the findings need."""

from __future__ import annotations

import math
from collections import defaultdict

from search_spaces.knobs import KNOBS, Knob
from sweeps.reproduce.findings import ExperimentResult, TrialCurve
from sweeps.results.analyze import base_reference
from sweeps.tracking.mlflow_compat import metric_histories
from sweeps.tracking.records import load_sweep
from sweeps.tracking.tracker import EVAL_PREFIX, STEP_METRICS
from trainers.report_point import TASK_PREFIX
from trainers.task_data import TASK_METRICS

L_UP, L_DOWN, LOSS = f"{EVAL_PREFIX}L_up", f"{EVAL_PREFIX}L_down", STEP_METRICS["loss"]


def collect_experiment(client, name: str, sweep: str, experiment: str, total_steps: int, pretrain_lr: float,
                       vocab_size: int, tokens_per_step: int) -> ExperimentResult:
    parent, records = load_sweep(client, sweep, experiment)
    base = base_reference(parent).model_dump()
    task_keys = [f"{TASK_PREFIX}{t}/{m}" for t in sorted(base["tasks"]) for m in TASK_METRICS]
    run_ids = [r["run_id"] for r in records]
    hist = {key: metric_histories(client, run_ids, key) for key in (L_UP, L_DOWN, LOSS, *task_keys)}
    trials = []
    for rec in sorted(records, key=lambda r: [str(r.get(k)) for k in KNOBS]):
        series = {key: {p.step: p.value for p in by_run[rec["run_id"]]} for key, by_run in hist.items()}
        evals = [(0, base["L_up"], base["L_down"])] + [
            (s, series[L_UP][s], series[L_DOWN][s]) for s in sorted(series[L_DOWN]) if s in series[L_UP]]
        tasks = defaultdict(dict)
        for key in task_keys:
            for s, v in series[key].items():
                tasks[s][key.removeprefix(TASK_PREFIX)] = v
        task_points = [{"step": s, "L_down": series[L_DOWN][s], **v} for s, v in sorted(tasks.items()) if s in series[L_DOWN]]
        trials.append(TrialCurve(
            knobs={k: rec.get(k) for k in KNOBS}, lr_factor=round(rec[Knob.MAX_LR] / pretrain_lr, 6),
            status=rec["status"], evals=evals, losses=sorted(series[LOSS].items()), tasks=task_points))
    ended = parent.info.end_time or parent.info.start_time
    return ExperimentResult(name=name, sweep=sweep, total_steps=total_steps, base=base, trials=trials,
                            uniform_loss=math.log(vocab_size), tokens_per_step=tokens_per_step,
                            sweep_wall_s=(ended - parent.info.start_time) / 1000)
