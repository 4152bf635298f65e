"""`make bench-sweep`: how much compute each search strategy needs to find a near-best schedule.

1. Ground truth (`sweep_ground_truth.py`): every config of the 36-config grid of
   `sweeps/specs/bench_sweep.yaml` trained once to the full budget; cached and committed.
2. Every strategy runs on real Ray Tune (its real searcher and scheduler) with a *replay*
   trainable: a trial reports its config's cached curve point by point, so a trial that the
   scheduler stops after k reports has cost exactly the compute of those k reports. Training is
   deterministic per config, so this is the curve the trial would have produced (the tabular
   benchmark method of Syne Tune's blackbox repository and HPOBench). Trials run one at a time,
   so the asynchronous schedulers' decisions do not depend on timing noise.
3. For each strategy and seed: the chosen config (the best full-budget trial by its observed
   final objective), its simple regret (grid best minus the chosen config's ground-truth final
   objective), the compute used (tokens, and wall time estimated from the ground-truth runs'
   measured seconds plus the measured per-trial start overhead of a real sweep), the anytime
   regret-vs-compute curve, and false kills (stopped trials whose config is in the grid's top 10%).

Results: `benchmarks/results/sweep_efficiency.json` and `sweep_efficiency.png`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

from benchmarks.sweep_ground_truth import CACHE, REPO, SPEC, load_or_build

RESULTS = REPO / "benchmarks" / "results"
SEEDS = tuple(range(10))
NUM_TRIALS = 36              # every strategy gets as many trials as the grid has configs
REGRET_GOAL = 0.02           # share of the grid's objective range
COMPUTE_GOAL = 0.20          # share of the grid's compute, every seed
MEDIAN_GOAL = 0.10           # share of the grid's compute, median over seeds
FALSE_KILL_GOAL = 0.05       # share of stops on top-10% configs
RUN_BUDGET_S = 120           # wall-time budget of one strategy run (a run takes 3-10 s)
KNOB_ORDER = ("max_lr", "replay_ratio", "warmup_frac", "schedule")


def key(knobs: dict) -> str:
    return json.dumps([knobs[k] for k in KNOB_ORDER])


# ---------------------------------------------------------------------- the replay trainable


def replay_trainable(config: dict, curves: dict, warmup_tokens: dict) -> None:
    """Report the cached curve of this config, point by point, like a real trial would.

    `config["checkpointed"]`: save the position with every report and continue from it, for
    schedulers that pause and later resume trials (HyperBand), as a real trial resumes from its
    checkpoint.
    """
    import tempfile

    from ray import tune

    k, checkpointed = key(config), config.get("checkpointed", False)
    # When the trial started, for ordering: Tune's trial ids are random 8-hex strings once a
    # searcher suggests the configs (Trial.generate_id), so they say nothing about order.
    started_ns, start = time.time_ns(), 0
    if checkpointed and (ckpt := tune.get_checkpoint()):
        with ckpt.as_directory() as d:
            started_ns, start = json.loads((Path(d) / "position.json").read_text())
    for i, point in enumerate(curves[k][start:], start):
        metrics = {**point, "warmup_tokens": warmup_tokens[k], "config_key": k, "started_ns": started_ns}
        if not checkpointed:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "position.json").write_text(json.dumps([started_ns, i + 1]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


# ---------------------------------------------------------------------- strategies


def _axes(gt: dict) -> dict:
    axes: dict[str, list] = {}
    for c in gt["configs"]:
        for name, v in c["knobs"].items():
            if v not in axes.setdefault(name, []):
                axes[name].append(v)
    return axes


def strategies(spec, gt: dict) -> dict:
    """name -> function(seed, trials_root) returning (param_space, search_alg, scheduler, num_samples)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from search_spaces.params import Choice
    from sweeps.execution.schedulers import make_scheduler, schedule_aware_scheduler
    from sweeps.execution.search import make_searcher

    axes = _axes(gt)
    reports = len(gt["configs"][0]["curve"])
    choice_params = {name: Choice(values=values) for name, values in axes.items()}

    def with_seed(seed):
        return spec.model_copy(update={"seed": seed, "budget": spec.budget.model_copy(
            update={"num_trials": NUM_TRIALS, "max_concurrent": 1})})

    def grid(seed, root):
        return {n: tune.grid_search(v) for n, v in axes.items()}, None, FIFOScheduler(), 1

    def random_asha(seed, root):
        # Ray Tune's defaults: random search, ASHA on training_iteration (one per report) with
        # its default grace_period=1 and reduction_factor=4.
        space = {n: tune.choice(v) for n, v in axes.items()}
        return (space, BasicVariantGenerator(random_state=seed),
                ASHAScheduler(metric="objective", mode="max", max_t=reports), NUM_TRIALS)

    def random_hyperband(seed, root):
        # Ray Tune's HyperBand with its defaults (reduction_factor=3) on training_iteration: it
        # pauses trials and resumes them from their checkpoints, so the replay checkpoints too.
        space = {n: tune.choice(v) for n, v in axes.items()}
        return ({**space, "checkpointed": True}, BasicVariantGenerator(random_state=seed),
                HyperBandScheduler(metric="objective", mode="max", max_t=reports), NUM_TRIALS)

    def tpe(seed, stopped_trials="truncated"):
        s = with_seed(seed)
        s = s.model_copy(update={"search_space": s.search_space.model_copy(update={"stopped_trials": stopped_trials})})
        return make_searcher(s, choice_params)

    def with_scheduler(seed, **changes):
        return with_seed(seed).model_copy(update={"scheduler": spec.scheduler.model_copy(update=changes)})

    def rewarm(seed, root, **changes):
        # The schedule-aware stopper as a real sweep builds it: the scheduler reads each trial's
        # LR schedule and replay ratio off its config (for the schedule law).
        return schedule_aware_scheduler(with_scheduler(seed, kind="rewarm", **changes), root)

    def tpe_asha(seed, root, stopped_trials="truncated"):
        return {}, tpe(seed, stopped_trials), make_scheduler(with_scheduler(seed, kind="asha"), choice_params), NUM_TRIALS

    def tpe_rewarm(seed, root, stopped_trials="truncated"):
        return {}, tpe(seed, stopped_trials), rewarm(seed, root, forecast=True, forecaster="linear"), NUM_TRIALS

    def tpe_rewarm_no_forecast(seed, root):
        return {}, tpe(seed), rewarm(seed, root, forecast=False), NUM_TRIALS

    def tpe_rewarm_law(seed, root, stopped_trials="truncated", rungs=True, coverage=0.9):
        # The schedule-law forecaster (sweeps/decisions/schedule_law.py).
        return {}, tpe(seed, stopped_trials), rewarm(seed, root, forecast=True, forecaster="law", rungs=rungs,
                                                     forecast_coverage=coverage), NUM_TRIALS

    def random_rewarm(seed, root):
        space = {n: tune.choice(v) for n, v in axes.items()}
        return (space, BasicVariantGenerator(random_state=seed), rewarm(seed, root, forecast=True, forecaster="linear"),
                NUM_TRIALS)

    def pruned(make):
        return lambda seed, root: make(seed, root, stopped_trials="pruned")

    # TPE rows tell Optuna a stopped trial's truncated value (Ray's rule) unless "pruned" says so.
    # Every Rewarm row names its forecaster, whatever the spec's default is.
    return {"grid": grid, "random+asha (Tune defaults)": random_asha,
            "random+hyperband (Tune defaults)": random_hyperband, "tpe+asha": tpe_asha,
            "tpe+asha, pruned": pruned(tpe_asha), "random+rewarm (linear)": random_rewarm,
            "tpe+rewarm (rungs only)": tpe_rewarm_no_forecast, "tpe+rewarm (linear)": tpe_rewarm,
            "tpe+rewarm (linear), pruned": pruned(tpe_rewarm), "tpe+rewarm (law + rungs)": tpe_rewarm_law,
            "tpe+rewarm (law 90%)": lambda seed, root: tpe_rewarm_law(seed, root, rungs=False),
            "tpe+rewarm (law 95%)": lambda seed, root: tpe_rewarm_law(seed, root, rungs=False, coverage=0.95),
            "tpe+rewarm (law 95%), pruned": lambda seed, root: tpe_rewarm_law(
                seed, root, stopped_trials="pruned", rungs=False, coverage=0.95)}


def run_strategy(name: str, make, seed: int, gt: dict, curves_ref, warmup_ref, storage: Path) -> list[dict]:
    """One Tune run; returns the trials in the order they started: config key and tokens reached.
    They run one at a time, so this is also the order they ended in, except under HyperBand,
    which pauses trials and resumes them later (its anytime curve is then approximate)."""
    from ray import tune

    slug = "".join(ch if ch.isalnum() else "_" for ch in name)
    root = storage / f"{slug}-{seed}"
    space, search_alg, scheduler, samples = make(seed, str(root / "decisions"))
    tuner = tune.Tuner(
        tune.with_parameters(replay_trainable, curves=curves_ref, warmup_tokens=warmup_ref),
        param_space=space,
        # A budget on the run's wall time: a run takes 3-10 s, but Tune's HyperBand can stall for
        # good with every trial paused (seen 2026-12-03, "no trial is running"); the run then
        # ends at the budget with what its trials reached, and is marked stalled.
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=samples,
                                    max_concurrent_trials=1, reuse_actors=True, time_budget_s=RUN_BUDGET_S),
        run_config=tune.RunConfig(name="run", storage_path=str(root), verbose=0),
    )
    t0 = time.time()
    grid = tuner.fit()
    stalled = time.time() - t0 >= RUN_BUDGET_S
    ended = []
    for r in grid:
        m = r.metrics
        if not m or "config_key" not in m:
            continue  # never started (the budget ran out first): it cost nothing
        ended.append({"key": m["config_key"], "tokens": int(m["tokens"]), "observed": m["objective"],
                      "started_ns": m["started_ns"], "trial_id": m["trial_id"], "stalled_run": stalled})
    return in_start_order(ended)


def in_start_order(trials: list[dict]) -> list[dict]:
    """Trials sorted by when their trainable started (never by trial id: see replay_trainable)."""
    return sorted(trials, key=lambda t: t["started_ns"])


def evaluate(trials: list[dict], gt_by_key: dict, max_tokens: int, best: float, span: float, top_keys: set,
             trial_start_s: float) -> dict:
    """Regret and compute of one strategy run, anytime and at the end."""
    compute = wall = 0.0
    incumbent = None  # (observed final, key)
    curve = []
    false_kills = false_kills_new = stopped = 0
    finished_keys = set()
    for t in trials:
        g = gt_by_key[t["key"]]
        compute += t["tokens"]
        wall += g["wall_s"] * t["tokens"] / max_tokens + trial_start_s
        if t["tokens"] >= max_tokens:
            finished_keys.add(t["key"])
            if incumbent is None or t["observed"] > incumbent[0]:
                incumbent = (t["observed"], t["key"])
        else:
            stopped += 1
            false_kills += t["key"] in top_keys
            # A repeat of a config that already finished loses no information when stopped
            # (searchers re-suggest points on a discrete grid); count those kills apart.
            false_kills_new += t["key"] in top_keys and t["key"] not in finished_keys
        regret = best - g_final(gt_by_key[incumbent[1]]) if incumbent else span
        curve.append({"trials": len(curve) + 1, "tokens": compute, "wall_s": wall, "regret": regret / span})
    return {"final_regret": curve[-1]["regret"], "tokens": compute, "wall_s": wall, "trials": len(trials),
            "completed": len(trials) - stopped, "stopped": stopped, "false_kills": false_kills,
            "false_kills_unfinished_config": false_kills_new, "distinct_configs": len({t["key"] for t in trials}),
            "chosen": incumbent[1] if incumbent else None, "curve": curve,
            "tokens_to_goal": next((c["tokens"] for c in curve if c["regret"] <= REGRET_GOAL), None)}


def g_final(config: dict) -> float:
    return config["curve"][-1]["objective"]


def report_only() -> None:
    """Recompute the summaries, goal check, plot and table from the per-seed runs on file."""
    path = RESULTS / "sweep_efficiency.json"
    report = json.loads(path.read_text())
    report["strategies"] = {name: summarize(r["per_seed"], report["grid_tokens"])
                            for name, r in report["strategies"].items()}
    report["goal_check"] = goal_check(report["strategies"], report["grid_tokens"])
    path.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, RESULTS / "sweep_efficiency.png")
    print_table(report)


def main() -> None:
    import sys

    if "--report-only" in sys.argv:
        return report_only()
    from trainers import ray_compat

    os.environ.setdefault(ray_compat.TUNE_NEW_OUTPUT_ENV, "0")
    os.environ.setdefault(ray_compat.TUNE_STATE_SAVE_PERIOD_ENV, "600")  # replay runs need no fault tolerance
    # Every result reaches the scheduler before the trial reports again: a replayed trial
    # reports far faster than a real one, and buffered results would run past a stop decision.
    os.environ.setdefault(ray_compat.TUNE_RESULT_BUFFER_LENGTH_ENV, "1")
    import tempfile

    import ray

    from sweeps.config.loading import load_spec
    from trainers.schedules import ScheduleConfig, warmup_steps

    t_start = time.time()
    gt = load_or_build()
    spec = load_spec(SPEC)
    max_tokens = gt["tokens_per_trial"]
    gt_by_key = {key(c["knobs"]): c for c in gt["configs"]}
    finals = sorted((g_final(c) for c in gt["configs"]), reverse=True)
    best, worst = finals[0], finals[-1]
    span = best - worst
    top_n = max(1, math.ceil(0.1 * len(finals)))
    top_keys = {k for k, c in gt_by_key.items() if g_final(c) >= finals[top_n - 1]}
    grid_tokens = max_tokens * len(gt["configs"])
    overhead = json.loads((RESULTS / "overhead.json").read_text()) if (RESULTS / "overhead.json").exists() else {}
    # The embedded default's trials are single-worker (overhead_bench.py: "rewarm_single_worker").
    trial_start_s = overhead.get("rewarm_single_worker", {}).get("overhead_s_median", 0.0)
    steps = max_tokens // gt["tokens_per_step"]
    warmup = {k: warmup_steps(ScheduleConfig(kind=c["knobs"]["schedule"], max_lr=c["knobs"]["max_lr"],
                                             warmup_frac=c["knobs"]["warmup_frac"]), steps) * gt["tokens_per_step"]
              for k, c in gt_by_key.items()}
    curves = {k: c["curve"] for k, c in gt_by_key.items()}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    curves_ref, warmup_ref = ray.put(curves), ray.put(warmup)
    # `--only NAME [--only NAME ...]`: run just these strategies and keep the others' rows from
    # the results on file (for iterating on one strategy; a committed table is one full run).
    only = [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--only"]
    path = RESULTS / "sweep_efficiency.json"
    results = json.loads(path.read_text())["strategies"] if only and path.exists() else {}
    chosen = {n: m for n, m in strategies(spec, gt).items() if not only or n in only}
    if only and len(chosen) != len(only):
        raise SystemExit(f"--only: no strategy named {sorted(set(only) - set(chosen))}; "
                         f"the strategies are {sorted(strategies(spec, gt))}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in chosen.items():
            seeds = (0,) if name == "grid" else SEEDS
            runs = []
            for seed in seeds:
                t0 = time.time()
                trials = run_strategy(name, make, seed, gt, curves_ref, warmup_ref, Path(tmp))
                run = evaluate(trials, gt_by_key, max_tokens, best, span, top_keys, trial_start_s)
                run.update(seed=seed, driver_s=time.time() - t0,
                           stalled=any(t.get("stalled_run") for t in trials))
                runs.append(run)
                print(f"{name:28s} seed {seed}: regret {run['final_regret']:.3%}, compute "
                      f"{run['tokens'] / grid_tokens:.1%} of grid, {run['stopped']} stopped "
                      f"({run['false_kills']} false kills), chosen {run['chosen']}  [{run['driver_s']:.0f} s]"
                      + ("  STALLED: Tune's run hit its time budget" if run["stalled"] else ""), flush=True)
            results[name] = summarize(runs, grid_tokens)
    ray.shutdown()
    report = {
        "spec": str(SPEC.relative_to(REPO)), "ground_truth": str(CACHE.relative_to(REPO)),
        "grid_configs": len(gt["configs"]), "grid_tokens": grid_tokens, "objective_best": best,
        "objective_worst": worst, "top_10pct_configs": sorted(top_keys), "seeds": list(SEEDS),
        "trials_per_run": NUM_TRIALS, "trial_start_overhead_s": trial_start_s,
        "goal": {"regret_share_of_range": REGRET_GOAL, "compute_share_of_grid_every_seed": COMPUTE_GOAL,
                 "compute_share_of_grid_median": MEDIAN_GOAL, "vs_random_asha": "at most 0.5x its compute to goal",
                 "false_kill_rate": FALSE_KILL_GOAL},
        "strategies": results, "goal_check": goal_check(results, grid_tokens),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "bench_wall_s": time.time() - t_start,
        "strategies_run_at_measured_at": sorted(chosen),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sweep_efficiency.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, RESULTS / "sweep_efficiency.png")
    print_table(report)


def summarize(runs: list[dict], grid_tokens: int) -> dict:
    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
        return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "n": len(values)}

    stopped = sum(r["stopped"] for r in runs)
    return {
        "final_regret": stats([r["final_regret"] for r in runs]),
        "compute_share": stats([r["tokens"] / grid_tokens for r in runs]),
        "wall_s": stats([r["wall_s"] for r in runs]),
        "compute_share_to_goal": stats([r["tokens_to_goal"] / grid_tokens if r["tokens_to_goal"] else None
                                        for r in runs]),
        # Median over all seeds, a run that never reaches the goal counting as infinite compute.
        "compute_share_to_goal_median": _median_or_never(
            [r["tokens_to_goal"] / grid_tokens if r["tokens_to_goal"] else math.inf for r in runs]),
        "runs_reaching_goal": sum(r["tokens_to_goal"] is not None for r in runs), "runs": len(runs),
        "stalled_runs": sum(bool(r.get("stalled")) for r in runs),
        "stopped_trials": stopped, "false_kills": sum(r["false_kills"] for r in runs),
        "false_kill_rate": sum(r["false_kills"] for r in runs) / stopped if stopped else 0.0,
        "false_kills_unfinished_config": sum(r["false_kills_unfinished_config"] for r in runs),
        "distinct_configs": stats([r["distinct_configs"] for r in runs]),
        "per_seed": runs,
    }


def _median_or_never(values: list[float]) -> float | None:
    m = statistics.median(values)
    return None if math.isinf(m) else m


def goal_check(results: dict, grid_tokens: int) -> dict:
    """Where each strategy lands against issue #16's goal: every seed within 2% regret with at
    most 20% of the grid's compute, median at most 10%, at most 0.5x random + ASHA's compute to
    the same regret, at most 5% of its stops on top-10% configs."""
    out = {}
    ref = results.get("random+asha (Tune defaults)", {}).get("compute_share_to_goal_median")
    for name, r in results.items():
        share = r["compute_share_to_goal_median"]
        ratio = (share / ref) if share and ref else None
        check = {
            "median_compute_share_to_goal": share,
            "all_seeds_reach_goal_within_20pct": all(
                run["tokens_to_goal"] is not None and run["tokens_to_goal"] / grid_tokens <= COMPUTE_GOAL
                for run in r["per_seed"]),
            "median_within_10pct": share is not None and share <= MEDIAN_GOAL,
            "compute_vs_random_asha": ratio,
            "at_most_half_of_random_asha": ratio is not None and ratio <= 0.5,
            "false_kills_at_most_5pct": r["false_kill_rate"] <= FALSE_KILL_GOAL,
        }
        check["meets_goal"] = all(v for k, v in check.items() if isinstance(v, bool))
        out[name] = check
    return out


def print_table(report: dict) -> None:
    print(f"\nGrid: {report['grid_configs']} configs; objective range {report['objective_worst']:.3f}.."
          f"{report['objective_best']:.3f}; goal: regret <= {REGRET_GOAL:.0%} of range with <= {COMPUTE_GOAL:.0%} of "
          f"the grid's compute\n")
    print(f"{'strategy':28s} {'regret (mean+-sd)':>18s} {'compute':>14s} {'to goal (median)':>17s} {'reach':>6s} "
          f"{'stopped':>8s} {'false kills (new)':>17s} {'wall (est)':>11s}")
    for name, r in report["strategies"].items():
        fr, cs, cg = r["final_regret"], r["compute_share"], r["compute_share_to_goal"]
        median = r["compute_share_to_goal_median"]
        to_goal = f"{median:.1%}" if median is not None else "never"
        print(f"{name:28s} {fr['mean']:>9.2%}+-{fr['sd']:<7.2%} {cs['mean']:>7.1%}+-{cs['sd']:<5.1%} {to_goal:>17s} "
              f"{r['runs_reaching_goal']}/{r['runs']:<4d} {r['stopped_trials']:>8d} {r['false_kills']:>5d} "
              f"({r['false_kill_rate']:>3.0%}) ({r['false_kills_unfinished_config']:>2d}) "
              f"{r['wall_s']['mean'] / 60:>8.1f} min")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    grid_tokens = report["grid_tokens"]
    xs = np.linspace(0, 1.0, 201)
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(report["strategies"]), 2)))
    for color, (name, r) in zip(colors, report["strategies"].items()):
        ys = []
        for run in r["per_seed"]:
            share = np.array([c["tokens"] / grid_tokens for c in run["curve"]])
            regret = np.array([c["regret"] for c in run["curve"]])
            idx = np.searchsorted(share, xs, side="right") - 1
            ys.append(np.where(idx >= 0, regret[np.clip(idx, 0, None)], 1.0))
        ys = np.array(ys)
        mean = ys.mean(axis=0)
        line, = ax.plot(xs, mean, label=name, color=color)
        if len(ys) > 1:
            ax.fill_between(xs, ys.min(axis=0), ys.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.axhline(REGRET_GOAL, color="grey", ls="--", lw=1)
    ax.axvline(COMPUTE_GOAL, color="grey", ls=":", lw=1)
    ax.set_xlabel("compute used (share of the full grid's tokens)")
    ax.set_ylabel("simple regret (share of the objective's range)")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Sweep efficiency on the {report['grid_configs']}-config toy grid (mean, min-max over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
