"""Ground truth of the sweep-efficiency benchmark: every grid config trained once to the full budget.

The grid is the product of the `choice` knobs of `sweeps/specs/bench_sweep.yaml`. Each config
runs the real training loop in this process (the same `Trainer` the Ray Train workers run, no
Ray: the benchmark measures search, not Ray start-up) and we keep its whole report curve:
tokens, objective, gain, forgetting, L_up, L_down and the training seconds up to each point.

Training is deterministic for a config (seeded data order, model RNG), so a trial that a
strategy stops after k reports would have produced exactly the first k points of this curve:
strategies can therefore be replayed against the cache (see `sweep_efficiency.py`).

The cache is keyed by a fingerprint of the resolved spec and the toy world; a stale or missing
cache is rebuilt (about 10 minutes on 2 CPU cores, two configs at a time).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "sweeps" / "specs" / "bench_sweep.yaml"
CACHE = REPO / "benchmarks" / "results" / "sweep_ground_truth.json"
CURVE_KEYS = ("tokens", "step", "objective", "gain", "forgetting", "L_up", "L_down", "loss", "lr", "status")


def grid_configs(spec) -> list[dict]:
    """Every combination of the spec's knob values, in a fixed order."""
    from search_spaces.params import Choice, Fixed

    params = spec.knob_params()
    axes = {}
    for name, p in params.items():
        if isinstance(p, Fixed):
            axes[name] = [p.value]
        elif isinstance(p, Choice):
            axes[name] = list(p.values)
        else:
            raise ValueError(f"search_space.params.{name}: the benchmark grid needs a value list, got {p.describe()}")
    names = sorted(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


# Spec fields that change neither training nor the (loss-based) objective: a cache stays valid
# across them. Task settings matter only when a task is part of the objective.
_NOT_IN_GROUND_TRUTH = {"name", "budget", "scheduler", "tracking", "tasks", "retention"}  # none changes a curve


def fingerprint(spec) -> str:
    from trainers.toyworld import _GENERATOR_VERSION

    dump = spec.model_dump(mode="json", exclude=_NOT_IN_GROUND_TRUTH)
    dump["training"].pop("task_eval_every_tokens", None)
    from trainers.parallel_config import ParallelConfig

    if spec.search_space.algorithm is None:
        dump["search_space"].pop("algorithm", None)  # the ground truth is a grid of its own (grid_configs)
    if spec.model.init == "pretrained":
        dump["model"].pop("init", None)  # the default: how the ground truth was trained
    if spec.resources.parallel() == ParallelConfig() and "resources" in dump:
        for key in ParallelConfig.model_fields:  # the defaults: how the ground truth was trained
            dump["resources"].pop(key, None)
    if spec.objective.task is None:
        for key in ("task", "task_metric", "task_weight"):
            dump["objective"].pop(key, None)
    else:
        dump["tasks"] = [t.model_dump(mode="json") for t in spec.tasks]
    payload = json.dumps([_GENERATOR_VERSION, dump, grid_configs(spec)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _train_one(args) -> dict:
    spec_path, knobs = args
    import torch

    from sweeps.config.resolve import resolve, trial_config
    from sweeps.config.loading import load_spec
    from trainers.local import run_in_process

    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    resolved = resolve(spec, log=lambda *_: None)
    cfg = trial_config(resolved, knobs).model_copy(update={"run_dir": None})
    cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"save_best": False})})
    t0 = time.perf_counter()
    reporter = run_in_process(cfg, device=torch.device("cpu"))
    wall = time.perf_counter() - t0
    train_s = 0.0
    curve = []
    steps_by_number = {s["step"]: s for s in reporter.steps}
    done = 0
    for r in reporter.reports:
        # training seconds up to this point, from each step's own measured throughput
        train_s += sum(spec.tokens_per_step / steps_by_number[k]["tokens_per_s"] for k in range(done + 1, r["step"] + 1)
                       if k in steps_by_number)
        done = r["step"]
        point = {k: r[k] for k in CURVE_KEYS if k in r}
        point["train_s"] = train_s
        curve.append(point)
    return {"knobs": knobs, "curve": curve, "wall_s": wall}


def build(spec_path: Path = SPEC, processes: int = 2, log=print) -> dict:
    from sweeps.config.resolve import resolve
    from sweeps.config.loading import load_spec

    spec = load_spec(spec_path)
    resolve(spec, log=log)  # build the toy world, data and base reference once, before forking
    configs = grid_configs(spec)
    log(f"ground truth: training {len(configs)} configs to {spec.budget.tokens_per_trial} tokens, {processes} at a time")
    t0 = time.time()
    results = []
    with mp.get_context("spawn").Pool(processes) as pool:
        for i, r in enumerate(pool.imap(_train_one, [(str(spec_path), c) for c in configs]), 1):
            final = r["curve"][-1]
            log(f"  [{i:2d}/{len(configs)}] {r['knobs']}  J={final['objective']:+.3f}  ({r['wall_s']:.1f} s)")
            results.append(r)
    return {"fingerprint": fingerprint(spec), "spec": str(spec_path.relative_to(REPO)),
            "tokens_per_trial": spec.budget.tokens_per_trial, "tokens_per_step": spec.tokens_per_step,
            "build_wall_s": time.time() - t0, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "configs": results}


def load_or_build(spec_path: Path = SPEC, cache: Path = CACHE, log=print) -> dict:
    from sweeps.config.loading import load_spec

    want = fingerprint(load_spec(spec_path))
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("fingerprint") == want:
            log(f"ground truth: using the cache {cache.relative_to(REPO)} ({len(data['configs'])} configs)")
            return data
        log("ground truth: the cache is stale (spec or toy world changed); rebuilding")
    data = build(spec_path, log=log)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":
    load_or_build()
