"""`make bench-sweep` (part 2): does the sweep driver keep up with large sweeps?

Times, with up to 1,000 finished trials in the history (synthetic curves, no Ray cluster needed):
- one suggestion of the Optuna TPE searcher the driver uses (`make_searcher`, through Ray
  Tune's `OptunaSearch` API: suggest + on_trial_complete), over the `default` search space;
- one decision of the schedule-aware stopper (`ScheduleAwareScheduler.on_trial_result`,
  including the append to the trial's decisions.jsonl and the state written for resume), and
  of Ray Tune's ASHA for reference;
- the same with `forecaster: law` on curves drawn from the schedule law, with schedules of
  LAW_STEPS optimizer steps (a 10B-token run at ~0.6M tokens per step): one decision (a
  forecast), and one refit of the law as trials end (`on_trial_complete`; the law refits at
  every ended trial up to 20, then each time their number grows by a tenth).

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
LAW_STEPS = 16384


class _Trial:  # what a TrialScheduler reads from Tune's Trial: its id and config
    def __init__(self, trial_id: str, config: dict | None = None):
        self.trial_id = trial_id
        self.config = config or {}


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


def law_curve(rng: random.Random, config: dict) -> list[dict]:
    """Report points of a trial whose L_up and L_down follow the schedule law (known parameters,
    noise 0.004 nats), at REPORTS evals over LAW_STEPS steps; base L_up 2.0, L_down 3.0."""
    import numpy as np

    from sweeps.decisions.schedule_law import schedule_areas

    lrs = _law_schedule(config).lrs
    a = schedule_areas(lrs, 1e-3, 0.9)
    g = math.log(config["max_lr"] / 1e-3)
    f = lambda s: (a.S1[s] + 3.0) ** -0.5  # noqa: E731
    A_down, A_up = 1.2 + 0.3 * g, -(0.5 + 0.15 * g) * (1 - 3 * config["replay"])
    points = []
    for k in range(1, REPORTS + 1):
        s = k * LAW_STEPS // REPORTS
        down = 3.0 - A_down * (f(0) - f(s)) - 0.02 * a.S2[s] + rng.gauss(0, 0.004)
        up = 2.0 - A_up * (f(0) - f(s)) - 0.03 * a.S2[s] + rng.gauss(0, 0.004)
        gain, forgetting = 3.0 - down, up - 2.0
        points.append({"tokens": k * 16384, "step": s, "L_up": float(up), "L_down": float(down), "gain": float(gain),
                       "forgetting": float(forgetting), "objective": float(gain - max(forgetting, 0.0)),
                       "loss": float(down), "warmup_tokens": 2048, "training_iteration": k,
                       "status": "completed" if k == REPORTS else "running"})
    return points


def _law_schedule(config: dict):
    from sweeps.decisions.stop_rule import TrialSchedule
    from trainers.schedules import ScheduleConfig

    return TrialSchedule(ScheduleConfig(kind="cosine", max_lr=config["max_lr"], warmup_frac=0.01), LAW_STEPS,
                         config["replay"])


def time_law_scheduler(make) -> dict:
    rng = random.Random(0)
    scheduler = make()
    marks, times, refits = {}, [], []
    for i in range(1, HISTORY + 1):
        config = {"max_lr": 3e-4 * 10 ** rng.uniform(0, 1), "replay": rng.choice([0.0, 0.05, 0.25])}
        trial = _Trial(f"t{i:05d}", config)
        scheduler.on_trial_add(None, trial)
        last = {}
        for point in law_curve(rng, config):
            last = point
            t0 = time.perf_counter()
            action = scheduler.on_trial_result(None, trial, last)
            times.append(time.perf_counter() - t0)
            if action == "STOP":
                break
        t0 = time.perf_counter()
        scheduler.on_trial_complete(None, trial, last)
        refits.append((scheduler.rule.law.fitted_on if scheduler.rule.law else 0, time.perf_counter() - t0))
        if i in CHECKPOINTS:
            window = times[-200:]
            marks[i] = {"decision_s_median_last200": statistics.median(window), "decision_s_max_last200": max(window),
                        "trial_end_s_max_last10": max(t for _, t in refits[-10:])}
    return {"by_history": marks, "decisions": len(times), "schedule_steps": LAW_STEPS,
            "stopped": scheduler.stopped, "law_fitted_on": scheduler.rule.law.fitted_on,
            "trial_end_s_max": max(t for _, t in refits)}


def main() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.decisions.stop_rule import StopRuleConfig
    from sweeps.execution.schedulers import ScheduleAwareScheduler

    with tempfile.TemporaryDirectory() as tmp:
        cfg = StopRuleConfig(max_tokens=MAX_TOKENS, recovery_tokens=MAX_TOKENS // 10, min_grace_tokens=16384)
        law_cfg = cfg.model_copy(update={"forecast": True, "forecaster": "law", "rungs": False})
        law_root = Path(tmp) / "law" / "decisions"
        result = {
            "history": HISTORY, "reports_per_trial": REPORTS,
            "searcher": time_searcher(),
            # decisions_root's parent holds the stopper's state: one fresh directory per stopper
            "rewarm_stopper": time_scheduler(lambda: ScheduleAwareScheduler(
                cfg, decisions_root=str(Path(tmp) / "linear" / "decisions"))),
            "rewarm_stopper_law": time_law_scheduler(lambda: ScheduleAwareScheduler(
                law_cfg, decisions_root=str(law_root), schedule_of=_law_schedule)),
            "asha_reference": time_scheduler(lambda: ASHAScheduler(time_attr="tokens", metric="objective", mode="max",
                                                                   max_t=MAX_TOKENS, grace_period=32768)),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_scale.json").write_text(json.dumps(result, indent=1) + "\n")
    s = result["searcher"]["by_history"][HISTORY]
    d = result["rewarm_stopper"]["by_history"][HISTORY]
    a = result["asha_reference"]["by_history"][HISTORY]
    law = result["rewarm_stopper_law"]
    lb = law["by_history"][HISTORY]
    print(f"with {HISTORY} finished trials: TPE suggestion {s['suggest_s_median_last10'] * 1000:.1f} ms (median of "
          f"the last 10), schedule-aware stop decision {d['decision_s_median_last200'] * 1e6:.0f} us "
          f"(ASHA {a['decision_s_median_last200'] * 1e6:.0f} us); law forecaster ({LAW_STEPS}-step schedules): "
          f"decision {lb['decision_s_median_last200'] * 1000:.1f} ms median, {lb['decision_s_max_last200'] * 1000:.1f} "
          f"ms max; trial end with a refit on {law['law_fitted_on']} trials at most {law['trial_end_s_max']:.2f} s")
    print(f"results: {RESULTS / 'search_scale.json'}")


if __name__ == "__main__":
    main()
