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
