"""`make bench` (part 2): per-trial fixed overhead, report latency and MLflow cost of a sweep.

Three kinds of trial run one after another on one local Ray cluster, each one trial at a time
(so resource waits do not count as overhead), on the demo spec's trial budget (128 steps):

  floor                  a plain Ray Tune function trainable (Tune's defaults) that runs the same
                         training loop in its own process, with no Rewarm driver, MLflow or run files
  rewarm, 1 worker       `run_sweep`: the loop in the Tune trial's process (trainers/worker.py)
  rewarm, 2 workers      `run_sweep`: a Ray Train run (TorchTrainer, DDP over two workers)

From the timestamps the driver's Tune callback, the trial's rank-0 process and the loop record:

  trial start (driver)  -> first step done          = start overhead
  last step done        -> trial end seen by driver = end overhead
  report made (worker)  -> result seen by driver    = report latency
  time in MLflow calls  / time in training steps    = logging share
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from trainers import ray_compat

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SINGLE_TRIALS, MULTI_TRIALS = 4, 2
GOALS = {"overhead_s_per_trial": 5.0, "report_latency_s_median": 0.2, "mlflow_share": 0.01}


def _demo_spec(tmp: str, name: str, overrides: list[str]):
    from sweeps.config.loading import load_spec

    return load_spec(REPO / "sweeps" / "specs" / "demo.yaml", [
        f"name={name}", "budget.max_concurrent=1", "scheduler.kind=none",
        f"storage_path={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db", *overrides])


# ---------------------------------------------------------------------- the floor


class _TuneOnly:
    """The loop's reports go to Tune and nowhere else; checkpoints are written, then dropped."""

    def checkpoint_target(self, step: int) -> Path:
        from trainers.checkpoint import scratch_checkpoint_dir

        return scratch_checkpoint_dir()

    def report(self, metrics: dict, steps: list[dict], checkpoint_dir: Path | None) -> None:
        import shutil

        from ray import tune

        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
        tune.report({**metrics, "time/last_step": steps[-1]["time"] if steps else None})


def floor_trial(config: dict, trial_json: str) -> None:
    import torch

    from trainers.config import TrialConfig
    from trainers.loop import Trainer, load_model

    cfg = TrialConfig.model_validate_json(trial_json)
    torch.set_num_threads(cfg.torch_threads or 1)
    device = torch.device("cpu")
    Trainer(cfg, load_model(cfg, device), device, _TuneOnly()).run()


def run_floor(spec, resolved) -> list[dict]:
    from ray import tune

    from sweeps.config.resolve import trial_config

    knobs = {"warmup_frac": 0.01, "max_lr": 3e-3, "replay_ratio": 0.05, "schedule": "cosine"}
    trial_json = trial_config(resolved, knobs).model_dump_json()
    seen: dict[str, dict] = {}

    class Times(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            seen.setdefault(trial.trial_id, {"results": []})["start"] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen[trial.trial_id]["results"].append(
                {"reported": result.get("time/report"), "seen": time.time(), "first_step": result.get("time/first_step"),
                 "last_step": result.get("time/last_step")})

        def on_trial_complete(self, iteration, trials, trial, **info):
            seen[trial.trial_id]["end"] = time.time()

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(floor_trial, trial_json=trial_json), {"CPU": 1}),
        param_space={"repeat": tune.grid_search(list(range(SINGLE_TRIALS)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name="floor", storage_path=str(Path(spec.storage_dir()).resolve()),
                                  callbacks=[Times()], verbose=0))
    # Tune's defaults, its own result loggers included, which Rewarm's settings turn off.
    loggers_off = os.environ.pop(ray_compat.TUNE_AUTO_LOGGERS_OFF_ENV, None)
    try:
        tuner.fit()
    finally:
        if loggers_off is not None:
            os.environ[ray_compat.TUNE_AUTO_LOGGERS_OFF_ENV] = loggers_off
    out = []
    for d in seen.values():
        first = next(r["first_step"] for r in d["results"] if r["first_step"])
        out.append({"start_to_first_step_s": first - d["start"],
                    "last_step_to_trial_end_s": d["end"] - d["results"][-1]["last_step"],
                    "report_latency_s": [r["seen"] - r["reported"] for r in d["results"]]})
    return out


# ---------------------------------------------------------------------- Rewarm trials


def run_rewarm(spec) -> list[dict]:
    from sweeps.execution.driver import run_sweep
    from trainers.run_dir import ATTEMPTS_FILE, CURVES_FILE, CurveLog

    outcome = run_sweep(spec, log=lambda *_: None)
    driver = json.loads((outcome.sweep_dir / "driver_timings.json").read_text())
    out = []
    for trial_id, d in driver.items():
        run_dir = outcome.sweep_dir / "trials" / trial_id
        attempt = json.loads((run_dir / ATTEMPTS_FILE).read_text().splitlines()[0])
        steps = CurveLog(run_dir / CURVES_FILE).read()
        step_time = sum(spec.tokens_per_step / s["tokens_per_s"] for s in steps)
        out.append({
            "start_to_first_step_s": attempt["first_step"] - d["start"],
            "start_breakdown_s": {
                "trial_start_to_worker_start": attempt["worker_start"] - d["start"],
                "model_load_and_resume": attempt["model_loaded"] - attempt["worker_start"],
                "to_first_step_done": attempt["first_step"] - attempt["model_loaded"],
            },
            "last_step_to_trial_end_s": d["end"] - steps[-1]["time"],
            "report_latency_s": [r["seen"] - r["reported"] for r in d["results"] if r.get("reported")],
            "mlflow_log_s": d["log_s"], "train_step_s": step_time,
            "mlflow_share_of_step_time": d["log_s"] / step_time,
        })
    return out


def summarize(per_trial: list[dict]) -> dict:
    med = statistics.median
    latencies = [x for t in per_trial for x in t["report_latency_s"]]
    out = {
        "trials": len(per_trial),
        "start_overhead_s_median": med(t["start_to_first_step_s"] for t in per_trial),
        "end_overhead_s_median": med(t["last_step_to_trial_end_s"] for t in per_trial),
        "overhead_s_median": med(t["start_to_first_step_s"] + t["last_step_to_trial_end_s"] for t in per_trial),
        "overhead_s_max": max(t["start_to_first_step_s"] + t["last_step_to_trial_end_s"] for t in per_trial),
        "report_latency_s_median": med(latencies), "report_latency_s_max": max(latencies),
    }
    if "mlflow_log_s" in per_trial[0]:
        out["mlflow_share_of_step_time_median"] = med(t["mlflow_share_of_step_time"] for t in per_trial)
        out["start_breakdown_s_median"] = {k: med(t["start_breakdown_s"][k] for t in per_trial)
                                           for k in per_trial[0]["start_breakdown_s"]}
    return {**out, "per_trial": per_trial}


def run() -> dict:
    from sweeps.execution.cluster import init_ray
    from sweeps.config.resolve import resolve

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory() as tmp:
        single = _demo_spec(tmp, "overhead-1", [f"budget.num_trials={SINGLE_TRIALS}"])
        multi = _demo_spec(tmp, "overhead-2", [f"budget.num_trials={MULTI_TRIALS}", "resources.workers_per_trial=2"])
        init_ray()
        t0 = time.time()
        floor = summarize(run_floor(single, resolve(single, log=lambda *_: None)))
        t1 = time.time()
        rewarm_single = summarize(run_rewarm(single))
        t2 = time.time()
        rewarm_multi = summarize(run_rewarm(multi))
        t3 = time.time()
    return {
        "steps_per_trial": single.steps_per_trial, "tokens_per_step": single.tokens_per_step,
        "floor": floor, "rewarm_single_worker": rewarm_single, "rewarm_two_workers": rewarm_multi,
        "wall_s": {"floor": t1 - t0, "rewarm_single_worker": t2 - t1, "rewarm_two_workers": t3 - t2},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": {"cpus": os.cpu_count()}, "goal": GOALS,
    }


def main() -> None:
    result = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"per-trial fixed overhead, {result['steps_per_trial']}-step trials, one at a time (goal <= "
          f"{GOALS['overhead_s_per_trial']:.0f} s; median of each kind's trials):")
    print(f"  {'kind':22s} {'start->1st step':>16s} {'last step->end':>15s} {'total':>7s} {'report latency':>15s}")
    for key, label in (("floor", "floor (plain Tune fn)"), ("rewarm_single_worker", "rewarm, 1 worker"),
                       ("rewarm_two_workers", "rewarm, 2 workers")):
        r = result[key]
        print(f"  {label:22s} {r['start_overhead_s_median']:14.2f} s {r['end_overhead_s_median']:13.2f} s "
              f"{r['overhead_s_median']:5.2f} s {1000 * r['report_latency_s_median']:12.0f} ms")
    for key in ("rewarm_single_worker", "rewarm_two_workers"):
        print(f"MLflow logging, {key}: {100 * result[key]['mlflow_share_of_step_time_median']:.2f}% of training "
              f"step time (goal < {100 * GOALS['mlflow_share']:.0f}%)")
    print(f"results: {RESULTS / 'overhead.json'}")


if __name__ == "__main__":
    main()
