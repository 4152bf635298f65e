"""`make bench-sweep` (part 2): does the sweep driver keep up with large sweeps?

Times, with up to 1,000 finished trials in the history (synthetic curves, no Ray cluster needed):
- one suggestion of the Optuna TPE searcher the driver uses (`make_searcher`, through Ray
  Tune's `OptunaSearch` API: suggest + on_trial_complete), over the `default` search space;
- one decision of the schedule-aware stopper (`ScheduleAwareScheduler.on_trial_result`,
  including the append to the trial's decisions.jsonl), and of Ray Tune's ASHA for reference.

Results: `benchmarks/results/search_scale.json`.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.sweep_ground_truth import REPO

RESULTS = REPO / "benchmarks" / "results"
HISTORY = 1000
CHECKPOINTS = (10, 100, 500, 1000)
REPORTS = 16
MAX_TOKENS = REPORTS * 16384


class _Trial:  # what a TrialScheduler reads from Tune's Trial: its id
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def synthetic_curve(rng: random.Random) -> list[float]:
    quality = rng.gauss(3.0, 1.0)
    return [quality * (1 - math.exp(-3 * (i + 1) / REPORTS)) + rng.gauss(0, 0.05) for i in range(REPORTS)]


def time_searcher() -> dict:
    from sweeps.config.loading import load_spec
    from sweeps.execution.search import make_searcher

    spec = load_spec(REPO / "sweeps" / "specs" / "demo.yaml", [f"budget.num_trials={HISTORY}"])
    searcher = make_searcher(spec, spec.knob_params())
    rng = random.Random(0)
    per_suggest, marks = [], {}
    for i in range(1, HISTORY + 1):
        t0 = time.perf_counter()
        config = searcher.suggest(f"t{i}")
        per_suggest.append(time.perf_counter() - t0)
        value = 4.0 - abs(math.log10(config["max_lr"] / 5e-3)) - 2 * abs(config["replay_ratio"] - 0.25) + rng.gauss(0, 0.1)
        searcher.on_trial_complete(f"t{i}", {"objective": value})
        if i in CHECKPOINTS:
            window = per_suggest[-10:]
            marks[i] = {"suggest_s_median_last10": statistics.median(window), "suggest_s_max_last10": max(window)}
    return {"sampler": "TPESampler (Optuna) via ray.tune.search.optuna.OptunaSearch", "by_history": marks,
            "total_s": sum(per_suggest)}


def time_scheduler(make) -> dict:
    rng = random.Random(0)
    scheduler = make()
    marks, times = {}, []
    for i in range(1, HISTORY + 1):
        trial = _Trial(f"t{i:05d}")
        scheduler.on_trial_add(None, trial)
        curve = synthetic_curve(rng)
        last = {}
        for k, value in enumerate(curve, 1):
            last = {"tokens": k * 16384, "objective": value, "loss": 2.0, "warmup_tokens": 2048,
                    "training_iteration": k, "status": "running"}
            t0 = time.perf_counter()
            action = scheduler.on_trial_result(None, trial, last)
            times.append(time.perf_counter() - t0)
            if action == "STOP":
                break
        scheduler.on_trial_complete(None, trial, last)
        if i in CHECKPOINTS:
            window = times[-200:]
            marks[i] = {"decision_s_median_last200": statistics.median(window), "decision_s_max_last200": max(window)}
    return {"by_history": marks, "decisions": len(times)}


def main() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.decisions.stop_rule import StopRuleConfig
    from sweeps.execution.schedulers import ScheduleAwareScheduler

    with tempfile.TemporaryDirectory() as tmp:
        cfg = StopRuleConfig(max_tokens=MAX_TOKENS, recovery_tokens=MAX_TOKENS // 10, min_grace_tokens=16384)
        result = {
            "history": HISTORY, "reports_per_trial": REPORTS,
            "searcher": time_searcher(),
            "rewarm_stopper": time_scheduler(lambda: ScheduleAwareScheduler(cfg, decisions_root=tmp)),
            "asha_reference": time_scheduler(lambda: ASHAScheduler(time_attr="tokens", metric="objective", mode="max",
                                                                   max_t=MAX_TOKENS, grace_period=32768)),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_scale.json").write_text(json.dumps(result, indent=1) + "\n")
    s = result["searcher"]["by_history"][HISTORY]
    d = result["rewarm_stopper"]["by_history"][HISTORY]
    a = result["asha_reference"]["by_history"][HISTORY]
    print(f"with {HISTORY} finished trials: TPE suggestion {s['suggest_s_median_last10'] * 1000:.1f} ms (median of "
          f"the last 10), schedule-aware stop decision {d['decision_s_median_last200'] * 1e6:.0f} us "
          f"(ASHA {a['decision_s_median_last200'] * 1e6:.0f} us)")
    print(f"results: {RESULTS / 'search_scale.json'}")


if __name__ == "__main__":
    main()
