"""Scheduler decisions on a fake trainable (as Syne Tune tests schedulers): no model, real Tune.

Curves are in "tokens" (our time attribute); each report is one eval point.
"""

import optuna
import pytest
from ray import tune

from sweeps.execution.fake_trainable import fake_trainable
from sweeps.execution.schedulers import DivergenceStopper, make_scheduler
from tests.conftest import small_spec

pytestmark = pytest.mark.ray

EVAL = 512 * 4  # tokens per eval of the small spec (eval_every_tokens=2048)
N_EVALS = 12


def _sweep(kinds, grace, tmp_path):
    spec = small_spec(budget={"tokens_per_trial": N_EVALS * EVAL}, scheduler={"kind": "asha", "grace_tokens": grace,
                                                                               "reduction_factor": 2})
    scheduler = make_scheduler(spec, spec.knob_params())
    tuner = tune.Tuner(
        fake_trainable,
        param_space={"kind": tune.grid_search(kinds), "evals": N_EVALS, "tokens_per_eval": EVAL},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(stop=DivergenceStopper(), verbose=0, storage_path=str(tmp_path)),
    )
    results = tuner.fit()
    return {r.config["kind"] + str(i): r.metrics["tokens"] for i, r in enumerate(results)}


ORDER = ["good", "good", "bad", "bad", "bump"]


def test_bump_trial_survives_with_schedule_aware_grace(local_ray, tmp_path):
    tokens = _sweep(ORDER, grace=4 * EVAL, tmp_path=tmp_path)  # warmup + recovery = 4 evals
    assert tokens["bump4"] == N_EVALS * EVAL  # judged only after recovering: it runs to the end
    assert min(tokens["bad2"], tokens["bad3"]) < N_EVALS * EVAL  # the scheduler does stop bad trials


def test_naive_grace_kills_the_bump_trial(local_ray, tmp_path):
    # The control: judged at its warmup bump, the eventual best trial is stopped.
    tokens = _sweep(ORDER, grace=EVAL, tmp_path=tmp_path)
    assert tokens["bump4"] < N_EVALS * EVAL


def test_diverging_trial_is_stopped_at_once(local_ray, tmp_path):
    tokens = _sweep(["good", "diverge"], grace=100 * EVAL, tmp_path=tmp_path)  # grace does not protect divergence
    assert tokens["diverge1"] == 3 * EVAL and tokens["good0"] == N_EVALS * EVAL


def test_default_grace_covers_longest_warmup_plus_recovery():
    spec = small_spec(budget={"tokens_per_trial": 100 * 512},
                      search_space={"params": {"warmup_frac": {"type": "uniform", "low": 0.0, "high": 0.2}}},
                      scheduler={"recovery_frac": 0.1})
    g = spec.asha_grace_tokens(spec.knob_params())
    assert g >= 0.3 * 100 * 512 and g % EVAL == 0 and g - EVAL < 0.3 * 100 * 512


def _searched_fake_sweep(spec, tmp_path, evals: int):
    """The spec's own searcher over the scripted CPT trade-off on real Tune: (searcher, results)."""
    from sweeps.execution.fake_trainable import fake_cpt_trainable
    from sweeps.execution.search import make_searcher

    searcher = make_searcher(spec, spec.knob_params())
    tuner = tune.Tuner(
        tune.with_parameters(fake_cpt_trainable),
        param_space={"evals": evals, "tokens_per_eval": EVAL},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.budget.num_trials,
                                    max_concurrent_trials=spec.budget.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(verbose=0, storage_path=str(tmp_path)),
    )
    return searcher, tuner.fit()


def test_pareto_objective_drives_a_multi_objective_optuna_search(local_ray, tmp_path):

    spec = small_spec(objective={"kind": "pareto"}, budget={"num_trials": 8, "tokens_per_trial": N_EVALS * EVAL},
                      search_space={"name": "default", "params": {"warmup_frac": 0.01, "schedule": "cosine",
                                                                  "max_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                                                                  "replay_ratio": {"type": "uniform", "low": 0.0, "high": 0.5}}},
                      scheduler={"kind": "none"})
    searcher, results = _searched_fake_sweep(spec, tmp_path, evals=3)
    assert len(results) == 8 and not results.errors
    study = searcher._ot_study  # the Optuna study behind OptunaSearch
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    assert all(len(t.values) == 2 for t in study.trials if t.values)  # (gain, forgetting) per trial
    front = study.best_trials
    assert front and all(not any(o.values[0] > t.values[0] and o.values[1] < t.values[1] for o in front) for t in front)


def test_grid_search_runs_each_point_once_on_real_tune(local_ray, tmp_path):
    """search_space.algorithm: grid, with trials run two at a time: every point of the choice
    lists exactly once (issue #15), through Ray Tune and Optuna's GridSampler."""
    grid = {"warmup_frac": 0.01, "schedule": "cosine", "max_lr": [1e-4, 1e-3, 1e-2], "replay_ratio": [0.0, 0.25]}
    spec = small_spec(budget={"num_trials": 6, "tokens_per_trial": N_EVALS * EVAL, "max_concurrent": 2},
                      search_space={"name": "default", "params": grid, "algorithm": "grid"},
                      scheduler={"kind": "none"})
    _, results = _searched_fake_sweep(spec, tmp_path, evals=2)
    assert len(results) == 6 and not results.errors
    points = sorted((r.config["max_lr"], r.config["replay_ratio"]) for r in results)
    assert points == sorted((lr, rr) for lr in grid["max_lr"] for rr in grid["replay_ratio"])
