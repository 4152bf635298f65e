"""The sweep's Optuna study in a real SQLite store: where it lives, what the searcher writes into
it, and what a resumed searcher does with trials Tune never saved."""

import optuna
import pytest

from sweeps.execution.search import SweepSearch, make_searcher
from sweeps.tracking.study import (LOST_TRIALS_ATTR, STATUS_ATTR, TUNE_TRIAL_ATTR, display_url, load_sweep_study,
                                   open_study_storage, study_storage_url)
from sweeps.tracking.store import TrackingError
from tests.conftest import small_spec


@pytest.mark.parametrize("tracking, explicit, expected", [
    ("sqlite:////data/mlflow.db", None, "sqlite:////data/optuna.db"),
    ("postgresql+psycopg://u:pw@db:5432/mlflow", None, "postgresql+psycopg://u:pw@db:5432/mlflow"),
    ("http://mlflow:5000", None, "sqlite:////shared/runs/optuna.db"),
    ("http://mlflow:5000", "postgresql://u@db/studies", "postgresql://u@db/studies"),
])
def test_study_storage_rule(tracking, explicit, expected):
    assert study_storage_url(tracking, explicit, "/shared/runs") == expected


def test_display_url_hides_the_password():
    assert display_url("postgresql+psycopg://u:secret@db:5432/mlflow") == "postgresql+psycopg://u:***@db:5432/mlflow"


def test_missing_study_is_one_line(tmp_path):
    with pytest.raises(TrackingError, match="no Optuna study 'nope'"):
        load_sweep_study(f"sqlite:///{tmp_path / 'optuna.db'}", "nope")


def _searcher(tmp_path, name="s", stopped_trials="truncated", objective="joint"):
    spec = small_spec(tmp_path, name=name, search_space={"name": "default", "params": {}, "stopped_trials": stopped_trials},
                      objective={"kind": objective}, budget={"num_trials": 6, "max_concurrent": 1})
    storage = open_study_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return make_searcher(spec, spec.knob_params(), storage), storage


def test_searcher_writes_values_against_tokens_and_rewarm_status(tmp_path):
    searcher, storage = _searcher(tmp_path)
    assert isinstance(searcher, SweepSearch)
    config = searcher.suggest("t1")
    for tokens, objective in ((2048, 0.5), (4096, 0.7)):
        searcher.on_trial_result("t1", {"tokens": tokens, "objective": objective, "training_iteration": 1})
    searcher.on_trial_complete("t1", {"tokens": 4096, "objective": 0.7, "gain": 1.0, "forgetting": 0.3,
                                      "status": "running"})  # ended by the scheduler: early_stopped
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.intermediate_values == {2048: 0.5, 4096: 0.7}
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.7
    assert trial.user_attrs[TUNE_TRIAL_ATTR] == "t1" and trial.user_attrs[STATUS_ATTR] == "early_stopped"
    assert trial.user_attrs["gain"] == 1.0 and trial.user_attrs["forgetting"] == 0.3
    assert {k: pytest.approx(v) for k, v in trial.params.items()} == \
           {k: pytest.approx(v) for k, v in config.items() if k in trial.params}


@pytest.mark.parametrize("objective", ["joint", "pareto"])
def test_a_stopped_trial_reaches_optuna_as_pruned_and_a_finished_one_as_complete(tmp_path, objective):
    searcher, storage = _searcher(tmp_path, stopped_trials="pruned", objective=objective)
    end = {"gain": 1.0, "forgetting": 0.3, "objective": 0.7}
    for tid, status in (("stopped", "running"), ("done", "completed"), ("diverged", "diverged")):
        searcher.suggest(tid)
        searcher.on_trial_result(tid, {"tokens": 2048, **end, "training_iteration": 1})
        searcher.on_trial_complete(tid, {"tokens": 2048, **end, "status": status})
    study = optuna.load_study(study_name="s", storage=storage)
    by_tune_id = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.trials}
    assert by_tune_id["stopped"].state == optuna.trial.TrialState.PRUNED
    assert by_tune_id["stopped"].user_attrs[STATUS_ATTR] == "early_stopped"
    assert by_tune_id["done"].state == optuna.trial.TrialState.COMPLETE
    assert by_tune_id["diverged"].state == optuna.trial.TrialState.COMPLETE  # a real end, not a scheduler's stop
    if objective == "joint":  # TPE ranks a pruned trial by its intermediate values, against tokens
        assert by_tune_id["stopped"].intermediate_values == {2048: 0.7}
    else:  # NSGA-II's front holds finished trials only
        front = {t.user_attrs[TUNE_TRIAL_ATTR] for t in study.best_trials}
        assert front and "stopped" not in front
    assert searcher.suggest("next") is not None  # the samplers go on with pruned trials in the study


def test_restored_searcher_fails_trials_tune_never_saved(tmp_path):
    searcher, storage = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last state save
    searcher.suggest("t2")  # then the driver dies
    restored, _ = _searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name="s", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state == optuna.trial.TrialState.RUNNING  # Tune continues it
    assert by_number[1].state == optuna.trial.TrialState.FAIL and study.user_attrs[LOST_TRIALS_ATTR] == [1]
    restored.on_trial_complete("t1", {"tokens": 4096, "objective": 0.4, "status": "completed"})
    assert optuna.load_study(study_name="s", storage=storage).trials[0].value == 0.4


GRID = {"warmup_frac": [0.0, 0.01], "max_lr": [1e-3, 3e-3], "replay_ratio": 0.1, "schedule": "cosine"}


def _grid_searcher(tmp_path):
    spec = small_spec(tmp_path, name="g", search_space={"params": GRID, "algorithm": "grid"},
                      budget={"num_trials": 4, "max_concurrent": 2})
    storage = open_study_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return make_searcher(spec, spec.knob_params(), storage), storage


def _point(config):
    return (config["warmup_frac"], config["max_lr"])


def test_grid_runs_every_point_exactly_once(tmp_path):
    searcher, _ = _grid_searcher(tmp_path)
    points = []
    for i in range(4):
        points.append(_point(searcher.suggest(f"t{i}")))
        searcher.on_trial_complete(f"t{i}", {"tokens": 4096, "objective": float(i), "status": "completed"})
    assert sorted(points) == sorted((w, lr) for w in GRID["warmup_frac"] for lr in GRID["max_lr"])


def test_grid_point_of_a_lost_trial_runs_after_resume(tmp_path):
    searcher, storage = _grid_searcher(tmp_path)
    first = [_point(searcher.suggest(t)) for t in ("t0", "t1")]
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last state save
    lost = _point(searcher.suggest("t2"))  # then the driver dies
    restored, _ = _grid_searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    for t in ("t0", "t1"):
        restored.on_trial_complete(t, {"tokens": 4096, "objective": 0.1, "status": "completed"})
    rest = [_point(restored.suggest(t)) for t in ("t3", "t4")]  # Tune makes up the budget
    assert rest[0] == lost  # the lost point is queued first
    done = [t for t in optuna.load_study(study_name="g", storage=storage).trials
            if t.state != optuna.trial.TrialState.FAIL]
    assert sorted(first + rest) == sorted((w, lr) for w in GRID["warmup_frac"] for lr in GRID["max_lr"])
    assert len(done) == 4


@pytest.mark.parametrize("sections, message", [
    ({"search_space": {"name": "default", "params": {}, "algorithm": "grid"}, "budget": {"num_trials": 4}},
     "search_space.params.warmup_frac: a grid needs a value or a list"),
    ({"search_space": {"params": GRID, "algorithm": "grid"}, "budget": {"num_trials": 5}},
     r"budget.num_trials \(5\) must equal the grid's size \(2 warmup_frac x 2 max_lr = 4\)"),
    ({"search_space": {"params": GRID, "algorithm": "nsga2"}}, "nsga2 searches a Pareto front"),
])
def test_search_algorithm_errors_name_the_field(sections, message):
    from sweeps.config.loading import SpecError

    with pytest.raises((SpecError, ValueError), match=message):
        small_spec(**sections)


def test_paper_presets_are_grids_of_their_stated_size():
    spec = small_spec(search_space={"name": "gupta2023", "params": {}, "algorithm": "grid"},
                      budget={"num_trials": 12})
    assert spec.grid_points() == 12 and spec.search_algorithm() == "grid"
    assert small_spec(search_space={"name": "ibrahim2024", "params": {}, "algorithm": "grid"},
                      budget={"num_trials": 7}).grid_points() == 7


@pytest.mark.parametrize("algorithm,objective", [("tpe", "joint"), ("random", "joint"), ("grid", "joint"),
                                                 ("nsga2", "pareto")])
def test_every_searcher_pickles_and_keeps_sampling(algorithm, objective, tmp_path):
    """Tune pickles the searcher (tuner.pkl, `rewarm resume`); Optuna 5.1's NSGA-II holds a lock
    that does not pickle, which PicklableNSGAIISampler drops and re-creates."""
    import pickle

    spec = small_spec(tmp_path, search_space={"params": GRID, "algorithm": algorithm},
                      objective={"kind": objective}, budget={"num_trials": 4})
    copy = pickle.loads(pickle.dumps(make_searcher(spec, spec.knob_params())))
    assert _point(copy.suggest("t0")) in {(w, lr) for w in GRID["warmup_frac"] for lr in GRID["max_lr"]}
