"""The committed benchmark caches and results still match the code that reads them."""

import json

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
