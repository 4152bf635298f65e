"""The committed benchmark caches and results still match the code that reads them."""

import json

import pytest

from benchmarks.sweep_ground_truth import CACHE, SPEC, fingerprint, grid_configs
from sweeps.config.loading import load_spec


def test_committed_ground_truth_matches_the_benchmark_spec():
    # A stale cache would make `make bench-sweep` silently retrain the whole grid.
    spec = load_spec(SPEC)
    cache = json.loads(CACHE.read_text())
    assert cache["fingerprint"] == fingerprint(spec)
    assert sorted(json.dumps(c["knobs"], sort_keys=True) for c in cache["configs"]) == \
        sorted(json.dumps(k, sort_keys=True) for k in grid_configs(spec))
    assert len(cache["configs"]) >= 36
    for c in cache["configs"]:
        tokens = [p["tokens"] for p in c["curve"]]
        assert tokens == sorted(tokens) and tokens[-1] == cache["tokens_per_trial"]


def test_ground_truth_ignores_task_settings_unless_a_task_is_in_the_objective():
    spec = load_spec(SPEC)
    with_tasks = load_spec(SPEC, ['tasks=[{"name": "nw", "path": "toy:next_word"}]'])
    assert fingerprint(with_tasks) == fingerprint(spec)
    scored = load_spec(SPEC, ['tasks=[{"name": "nw", "path": "toy:next_word"}]', "objective.task=nw"])
    assert fingerprint(scored) != fingerprint(spec)


@pytest.mark.slow
def test_gpu_bench_script_runs_end_to_end_in_its_cpu_smoke_mode(tmp_path):
    """`make bench-gpu` cannot run here (no GPU); its code path can, on a tiny model, so the
    script works the day a GPU machine runs it."""
    import subprocess
    import sys

    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_bench", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for strategy in ("ddp", "fsdp"):
        assert result[strategy]["tokens_per_s"] > 0 and 0 < result[strategy]["ratio_to_bare"]
    assert result["gpu"].startswith("none") and "goal_mfu_40pct_met" in result


@pytest.mark.ray
def test_sweep_benchmark_orders_a_searchers_trials_by_start_not_by_id(local_ray, tmp_path):
    """With a searcher, Tune's trial ids are random hex (Trial.generate_id): the benchmark's
    anytime curves must follow the order the searcher started the trials in."""
    from ray import cloudpickle
    from ray.tune.schedulers import FIFOScheduler

    import benchmarks.sweep_efficiency as bench
    from benchmarks.sweep_efficiency import KNOB_ORDER, key, run_strategy
    from search_spaces.params import Choice
    from sweeps.execution.search import make_searcher

    axes = {"max_lr": [1e-4, 3e-4, 1e-3], "replay_ratio": [0.0, 0.1], "warmup_frac": [0.01], "schedule": ["cosine"]}
    configs = [dict(zip(KNOB_ORDER, v)) for v in
               [(lr, r, 0.01, "cosine") for lr in axes["max_lr"] for r in axes["replay_ratio"]]]
    curves = {key(c): [{"tokens": t, "objective": c["max_lr"] * 1e3 * t / 3 - c["replay_ratio"]} for t in (1, 2, 3)]
              for c in configs}
    # The shared test cluster's workers need not have the repo on their path (`benchmarks` is not
    # an installed package): ship the replay trainable's module by value.
    cloudpickle.register_pickle_by_value(bench)
    spec = load_spec(SPEC, ["budget.num_trials=8", "budget.max_concurrent=1"])
    searcher = make_searcher(spec, {n: Choice(values=v) for n, v in axes.items()})
    trials = run_strategy("tpe", lambda seed, root: ({}, searcher, FIFOScheduler(), 8), 0, {},
                          curves, {k: 0 for k in curves}, tmp_path)
    suggested = [key(t.params) for t in sorted(searcher._ot_study.trials, key=lambda t: t.number)]
    assert len(trials) == 8 and [t["key"] for t in trials] == suggested


def test_interleaved_throughput_charges_each_loop_only_its_own_steps(toy_world, monkeypatch):
    """The trainer benchmark runs a bare step before each Rewarm step and subtracts it: a bare
    step made 0.5 s slower must slow the bare figure alone, not the Rewarm loop's. (0.5 s, not
    less: a toy step takes 0.1-0.3 s, the upper end beside another test process.)"""
    import time

    import benchmarks.trainer_bench as tb
    from sweeps.config.resolve import resolve, trial_config

    monkeypatch.setattr(tb, "STEPS", 12)
    monkeypatch.setattr(tb, "WARM", 2)
    spec = tb._spec()
    cfg = trial_config(resolve(spec), spec.fixed_knobs())
    cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"evaluate": False})})
    slow_step = tb.BareLoop.step
    monkeypatch.setattr(tb.BareLoop, "step", lambda self: (slow_step(self), time.sleep(0.5)))
    r = tb.interleaved_round(cfg, __import__("torch").device("cpu"))
    tokens_per_step = cfg.loop.global_batch_size * cfg.loop.seq_len
    assert r["bare_tokens_per_s"] < tokens_per_step / 0.5
    # Were the bare step not subtracted, the Rewarm loop would be slower than the bare one.
    assert r["rewarm_tokens_per_s"] > 1.5 * r["bare_tokens_per_s"]
