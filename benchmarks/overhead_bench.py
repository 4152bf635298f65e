"""`make bench` (part 2): per-trial fixed overhead, report latency and MLflow cost of a sweep.

Runs a small real sweep (local Ray, SQLite MLflow in a temp dir, one trial at a time so
resource waits do not count as overhead) and reads the timestamps that the driver's Tune
callback, the trial's rank-0 worker and the training loop record:

  trial start (driver)  -> worker start -> model loaded -> first step done   = start overhead
  last step done        -> trial end seen by the driver                      = end overhead
  report made (worker)  -> result seen by the driver's callback              = report latency
  time in MLflow logging / time in training steps                            = logging share
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TRIALS, STEPS = 4, 32


def run() -> dict:
    from sweeps.spec import load_spec
    from sweeps.tune_driver import run_sweep
    from trainers.worker import ATTEMPTS_FILE, CURVES_FILE, CurveLog

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        spec = load_spec(REPO / "sweeps" / "specs" / "demo.yaml", [
            "name=overhead", f"budget.num_trials={TRIALS}", "budget.max_concurrent=1",
            f"budget.tokens_per_trial={STEPS * 16 * 128}", "scheduler.kind=none",
            f"storage_path={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db"])
        t0 = time.time()
        outcome = run_sweep(spec, log=lambda *_: None)
        wall = time.time() - t0
        driver = json.loads((outcome.sweep_dir / "driver_timings.json").read_text())
        per_trial = []
        for trial_id, d in driver.items():
            run_dir = outcome.sweep_dir / "trials" / trial_id
            attempt = [json.loads(x) for x in (run_dir / ATTEMPTS_FILE).read_text().splitlines()][0]
            steps = CurveLog(run_dir / CURVES_FILE).read()
            step_time = sum(spec.tokens_per_step / s["tokens_per_s"] for s in steps)
            per_trial.append({
                "start_to_first_step_s": attempt["first_step"] - d["start"],
                "start_breakdown_s": {
                    "trial_start_to_worker_start": attempt["worker_start"] - d["start"],
                    "model_load_and_prepare": attempt["model_loaded"] - attempt["worker_start"],
                    "first_step": attempt["first_step"] - attempt["model_loaded"],
                },
                "last_step_to_trial_end_s": d["end"] - steps[-1]["time"],
                "report_latency_s": [r["seen"] - r["reported"] for r in d["results"] if r.get("reported")],
                "mlflow_log_s": d["log_s"], "train_step_s": step_time,
                "mlflow_share_of_step_time": d["log_s"] / step_time,
            })
    latencies = [x for t in per_trial for x in t["report_latency_s"]]
    med = statistics.median
    return {
        "trials": TRIALS, "steps_per_trial": STEPS, "sweep_wall_s": wall,
        "start_overhead_s_median": med(t["start_to_first_step_s"] for t in per_trial),
        "start_breakdown_s_median": {k: med(t["start_breakdown_s"][k] for t in per_trial)
                                     for k in per_trial[0]["start_breakdown_s"]},
        "end_overhead_s_median": med(t["last_step_to_trial_end_s"] for t in per_trial),
        "report_latency_s_median": med(latencies), "report_latency_s_max": max(latencies),
        "mlflow_share_of_step_time_median": med(t["mlflow_share_of_step_time"] for t in per_trial),
        "per_trial": per_trial, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "goal": {"overhead_s_per_trial": 5.0, "mlflow_share": 0.01},
    }


def main() -> None:
    result = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"sweep trial overhead: start->first step {result['start_overhead_s_median']:.1f} s, "
          f"last step->trial end {result['end_overhead_s_median']:.1f} s (median of {TRIALS}; goal <= 5 s)")
    for k, v in result["start_breakdown_s_median"].items():
        print(f"  {k:32s} {v:6.2f} s")
    print(f"report latency (worker report -> driver): median {result['report_latency_s_median'] * 1000:.0f} ms, "
          f"max {result['report_latency_s_max'] * 1000:.0f} ms")
    print(f"MLflow logging: {100 * result['mlflow_share_of_step_time_median']:.2f}% of training step time (goal < 1%)")
    print(f"results: {RESULTS / 'overhead.json'}")


if __name__ == "__main__":
    main()
