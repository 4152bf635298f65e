"""`make bench` (part 3): do `rewarm best`, `analyze` and `report` keep up with a large sweep?

A real SQLite MLflow store holding one sweep of 1,000 trial runs with 100 report points each
(eval losses, gain, forgetting, objective, LR, tokens, one task's three metrics), written
through Rewarm's own Tracker as a sweep driver writes it (synthetic curves, no training).
The store is built once into the cache (`$REWARM_CACHE_DIR/bench_read_scale`, ~1.2M metric
rows) and reused. Each command is then timed as a user runs it (`rewarm ...` in a fresh
process, imports included), goal < 30 s each.

Results: `benchmarks/results/read_scale.json`.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.sweep_ground_truth import REPO

RESULTS = REPO / "benchmarks" / "results"
TRIALS, POINTS = 1000, 100
GOAL_S = 30.0
SWEEP = "read-scale"
STORE_VERSION = 1  # bump when the store's content changes


def _store_dir() -> Path:
    from trainers.toyworld import default_cache_dir

    return default_cache_dir() / "bench_read_scale" / f"v{STORE_VERSION}-{TRIALS}x{POINTS}"


def build_store(directory: Path) -> str:
    """The store (built once); its tracking URI."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    done = directory / "complete"
    if done.exists():
        return uri
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    import yaml

    from sweeps.config.loading import load_spec
    from sweeps.tracking.statuses import SweepStatus, TrialStatus
    from sweeps.tracking.tracker import Tracker
    from trainers.report_point import ReportPoint, RunStatus

    spec = load_spec(REPO / "sweeps" / "specs" / "demo.yaml", [f"name={SWEEP}", f"budget.num_trials={TRIALS}",
                                                               f"tracking.uri={uri}"]).anchored()
    tracker = Tracker(uri, "read-scale", SWEEP)
    base = {"L_up": 2.1, "L_down": 6.8, "tasks": {"next_word": {"accuracy": 0.25, "correct_prob": 0.25,
                                                               "brier": 0.75, "chance_accuracy": 0.25}}}
    tracker.start_parent(yaml.safe_dump(spec.model_dump(mode="json")), spec.mlflow_params(), base,
                         {k: p.describe() for k, p in spec.knob_params().items()}, resume=False)
    rng = random.Random(0)
    tokens_per_point = 16384
    started = time.time()
    for i in range(TRIALS):
        lr, replay, warmup = 10 ** rng.uniform(-3, -2), rng.uniform(0, 0.25), rng.uniform(0, 0.02)
        stop = POINTS if i % 3 == 0 else rng.randint(4, POINTS - 1)  # two thirds stopped early
        run_id, marks = tracker.child_for_trial(f"t{i:04d}", {"warmup_frac": warmup, "max_lr": lr,
                                                              "replay_ratio": replay, "schedule": "cosine"},
                                                spec.mlflow_params())
        reports = []
        for k in range(1, stop + 1):
            progress = k / POINTS
            L_down = 6.8 - 3.5 * (1 - math.exp(-4 * progress)) * (1 + math.log10(lr / 1e-3) / 2) + rng.gauss(0, 0.01)
            L_up = 2.1 + 0.8 * progress * (lr / 5e-3) * (1 - 3 * replay) + rng.gauss(0, 0.01)
            gain, forgetting = 6.8 - L_down, L_up - 2.1
            accuracy = 0.25 if L_down > 4.5 else min(1.0, 0.25 + 0.3 * (4.5 - L_down))
            reports.append(ReportPoint(
                tokens=k * tokens_per_point, step=k * 8, status=RunStatus.COMPLETED if k == POINTS else RunStatus.RUNNING,
                loss=L_down, lr=lr * (0.1 + 0.9 * (1 + math.cos(math.pi * progress)) / 2), tokens_per_s=2e4,
                replay_share=replay, L_up=L_up, L_down=L_down, gain=gain, forgetting=forgetting,
                objective=gain - max(forgetting, 0.0), avg_loss=(L_up + L_down) / 2,
                tasks={"next_word": {"accuracy": accuracy, "correct_prob": accuracy, "brier": 1 - accuracy}},
                time_report=time.time()).to_result())
        steps = [{"step": r["step"], "loss": r["loss"], "lr": r["lr"], "grad_norm": 1.0} for r in reports]
        tracker.log_progress(run_id, steps, reports, marks)
        status = TrialStatus.COMPLETED if stop == POINTS else TrialStatus.EARLY_STOPPED
        tracker.finish_child(run_id, status, reports[-1], artifacts={})
        if i % 100 == 99:
            print(f"[bench] store: {i + 1}/{TRIALS} trial runs ({time.time() - started:.0f} s)", flush=True)
    tracker.finish_parent(SweepStatus.COMPLETED)
    done.write_text(json.dumps({"built_s": time.time() - started}))
    return uri


def time_command(args: list[str], cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("rewarm")), *args], capture_output=True, text=True,
                          cwd=cwd, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"rewarm {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"command": "rewarm " + " ".join(args), "wall_s": round(wall, 2), "goal_s": GOAL_S, "met": wall < GOAL_S}


def main() -> None:
    from sweeps.settings import apply_process_settings

    apply_process_settings()
    directory = _store_dir()
    uri = build_store(directory)
    built = json.loads((directory / "complete").read_text())
    out = directory / "report"
    results = [time_command(args, directory) for args in (
        ["best", "--sweep", SWEEP, "--tracking-uri", uri, "--top", "10"],
        ["analyze", "--sweep", SWEEP, "--tracking-uri", uri],
        ["report", "--sweep", SWEEP, "--tracking-uri", uri, "--out", str(out)],
    )]
    summary = {"trials": TRIALS, "points_per_trial": POINTS, "store": "SQLite, written through Rewarm's Tracker",
               "store_built_s": round(built["built_s"], 1), "commands": results,
               "cpus": os.cpu_count(), "measured": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "read_scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        print(f"[bench] {r['command'].split(' --')[0]}: {r['wall_s']:.1f} s (goal < {GOAL_S:.0f} s: "
              f"{'met' if r['met'] else 'MISSED'})")


if __name__ == "__main__":
    main()
