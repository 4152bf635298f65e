"""`rewarm reproduce PAPER`: run the paper's experiments as sweeps, then write the findings report.

Each experiment is an ordinary sweep (named `<prefix>-<experiment>`, tracked in MLflow like any
other). Running the command again continues where it stopped: a finished sweep of the same
spec is reused, an unfinished one resumed (`rewarm resume`), and a sweep of that name with
another spec is refused. The report (report.html, findings.json, one PNG per figure) goes to
`--out`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from sweeps.config.layout import SPEC_FILE
from sweeps.config.spec import SweepSpec
from sweeps.reproduce import figures
from sweeps.reproduce.collect import collect_experiment
from sweeps.reproduce.experiments import (FINAL_LR_FACTOR, Experiment, ReproduceError, experiments_for,
                                          load_base_spec, papers_for)
from sweeps.reproduce.findings import ExperimentResult, Finding, findings_for, task_points
from sweeps.reproduce.page import write_page
from sweeps.tracking.records import load_sweep
from sweeps.tracking.statuses import SweepStatus
from sweeps.tracking.tracker import STATUS_TAG

FINDINGS_FILE = "findings.json"


def reproduce(paper: str, out_dir: Path, prefix: str = "reproduce", tokens_per_trial: int | None = None,
              overrides: list[str] | None = None, address: str | None = None, log=print) -> list[Finding]:
    experiments = experiments_for(paper)
    base = load_base_spec(overrides=overrides)
    specs = {e.name: e.spec(base, prefix, tokens_per_trial) for e in experiments}
    t0 = time.time()
    timings = {}
    for e in experiments:
        start = time.time()
        _run_or_reuse(e, specs[e.name], address, log)
        timings[e.name] = round(time.time() - start, 1)
    results = {e.name: _collect(e, specs[e.name]) for e in experiments}
    findings = [f for p in papers_for(paper) for f in findings_for(p, results, FINAL_LR_FACTOR)]
    out_dir.mkdir(parents=True, exist_ok=True)
    _figures(results, findings, out_dir)
    # Two times: this invocation's (which reuses finished sweeps) and the sweeps' own, from MLflow.
    meta = {"paper": paper, "prefix": prefix, "wall_s": round(time.time() - t0, 1), "experiment_wall_s": timings,
            "sweeps_wall_s": round(sum(r.sweep_wall_s for r in results.values()), 1),
            "sweeps": {n: s.name for n, s in specs.items()},
            "trials": sum(s.budget.num_trials for s in specs.values()),
            "tokens_per_trial": next(iter(specs.values())).budget.tokens_per_trial,
            "experiments": {e.name: e.description for e in experiments}}
    (out_dir / FINDINGS_FILE).write_text(json.dumps({**meta, "findings": [f.__dict__ for f in findings]},
                                                    indent=2, default=float))
    write_page(out_dir, meta, findings)
    return findings


def _sweep_spec_on_disk(spec: SweepSpec) -> dict | None:
    from sweeps.execution.driver import sweep_dir_for

    path = sweep_dir_for(spec) / SPEC_FILE
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _run_or_reuse(experiment: Experiment, spec: SweepSpec, address: str | None, log) -> None:
    from mlflow import MlflowClient

    from sweeps.execution.driver import run_sweep

    stored = _sweep_spec_on_disk(spec)
    if stored is None:
        log(f"[rewarm] reproduce: {experiment.name} ({spec.budget.num_trials} trials): {experiment.description}")
        run_sweep(spec, address=address, log=log)
        return
    if stored != spec.anchored().model_dump(mode="json"):
        raise ReproduceError(f"sweep {spec.name!r} already exists with another spec (budget or base spec changed); "
                             f"pass --name to reproduce under new sweep names")
    parent, _ = load_sweep(MlflowClient(spec.tracking_uri()), spec.name, spec.tracking.experiment, with_trials=False)
    if parent.data.tags.get(STATUS_TAG) == SweepStatus.COMPLETED:
        log(f"[rewarm] reproduce: {experiment.name}: sweep {spec.name} already finished, reused")
        return
    log(f"[rewarm] reproduce: {experiment.name}: continuing the unfinished sweep {spec.name}")
    run_sweep(spec, address=address, resume=True, log=log)


def _collect(experiment: Experiment, spec: SweepSpec) -> ExperimentResult:
    from mlflow import MlflowClient
    from transformers import AutoConfig

    from trainers.toyworld import toy_world_paths

    model_path = str(toy_world_paths(spec.toy_world).model) if spec.uses_toy_model else spec.model.name_or_path
    vocab = AutoConfig.from_pretrained(model_path).vocab_size
    return collect_experiment(MlflowClient(spec.tracking_uri()), experiment.name, spec.name, spec.tracking.experiment,
                              spec.steps_per_trial, spec.pretrain_lr(), vocab, spec.tokens_per_step)


def _figures(results: dict[str, ExperimentResult], findings: list[Finding], out_dir: Path) -> None:
    if "lr-warmup" in results:
        figures.lr_warmup(results["lr-warmup"], out_dir / "gupta2023_lr_warmup.png")
        figures.warmup_early(results["lr-warmup"], out_dir / "gupta2023_warmup.png")
    if "same-data" in results:
        figures.same_data(results["same-data"], out_dir / "gupta2023_same_data.png")
    if "from-scratch" in results and "lr-warmup" in results:
        figures.scratch(results["lr-warmup"], results["from-scratch"], out_dir / "gupta2023_scratch.png")
    if "replay" in results:
        figures.replay(results["replay"], out_dir / "ibrahim2024_replay.png")
    threshold = next((f for f in findings if f.id == "task-threshold"), None)
    if threshold is not None:
        points = task_points([results[n] for n in ("lr-warmup", "from-scratch")])
        figures.task_vs_loss(points, threshold, out_dir / "du2024_task_vs_loss.png")
