"""Canaries for every Ray internal Rewarm relies on (trainers/ray_compat.py).

Each test names one item; on a Ray upgrade that moves it, that test fails and says what to
fix in ray_compat.py. They also justify the upper bound on Ray in pyproject.toml.
"""

from __future__ import annotations

import inspect
import re
import time
import tomllib

import pytest

from tests.conftest import REPO
from trainers import ray_compat


def test_ray_is_within_the_version_range_these_canaries_cover():
    import ray

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("ray["))
    low, high = re.search(r">=([\d.]+),<([\d.]+)", spec).groups()
    version = tuple(int(x) for x in ray.__version__.split(".")[:2])
    assert tuple(int(x) for x in low.split(".")[:2]) <= version < tuple(int(x) for x in high.split(".")[:2]), (
        f"Ray {ray.__version__} is outside {spec}: run these canaries on it and move the bound")


def test_train_v2_reads_the_environment_variables_rewarm_sets():
    from ray.train.v2._internal import constants

    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR == ray_compat.TRAIN_HEALTH_CHECK_INTERVAL_ENV
    assert constants.V2_ENABLED_ENV_VAR == ray_compat.TRAIN_V2_ENABLED_ENV
    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR == ray_compat.TRAIN_PREEMPTION_WATCHER_ENV


def test_a_train_run_without_datasets_drops_only_the_datasets_callback():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    def kinds(trainer):
        return [type(cb).__name__ for cb in trainer._create_default_callbacks()]

    def make():
        return TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=2))

    before = kinds(make())
    assert DatasetsCallback.__name__ in before  # Ray still adds it to every run: the patch is needed
    after = kinds(ray_compat.without_idle_dataset_manager(make()))
    assert after == [k for k in before if k != DatasetsCallback.__name__]


def test_tune_reads_its_state_save_period_output_mode_and_result_buffer_from_the_environment():
    from ray.tune import tune as tune_module
    from ray.tune.execution import tune_controller
    from ray.tune.experimental import output

    assert f'"{ray_compat.TUNE_STATE_SAVE_PERIOD_ENV}"' in inspect.getsource(tune_controller)
    assert f'"{ray_compat.TUNE_NEW_OUTPUT_ENV}"' in inspect.getsource(output)
    assert f'"{ray_compat.TUNE_RESULT_BUFFER_LENGTH_ENV}"' in inspect.getsource(tune_module)


def test_tune_adds_no_loggers_of_its_own_where_rewarm_says_so(monkeypatch):
    from ray.tune.logger import LoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    monkeypatch.delenv(ray_compat.TUNE_AUTO_LOGGERS_OFF_ENV, raising=False)
    assert any(isinstance(c, LoggerCallback) for c in _create_default_callbacks([], air_verbosity=None))
    monkeypatch.setenv(ray_compat.TUNE_AUTO_LOGGERS_OFF_ENV, "1")
    assert not any(isinstance(c, LoggerCallback) for c in _create_default_callbacks([], air_verbosity=None))


def test_job_config_and_api_server_variables_keep_their_names():
    from ray._private import ray_constants
    from ray._private.runtime_env import constants

    assert constants.RAY_JOB_CONFIG_JSON_ENV_VAR == ray_compat.JOB_CONFIG_ENV
    assert ray_constants.RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE == ray_compat.API_SERVER_ADDRESS_ENV


def test_submitted_job_env_vars_read_the_job_config(monkeypatch):
    monkeypatch.setenv(ray_compat.JOB_CONFIG_ENV, '{"runtime_env": {"env_vars": {"A": "1"}}}')
    assert ray_compat.submitted_job_env_vars() == {"A": "1"}
    monkeypatch.delenv(ray_compat.JOB_CONFIG_ENV)
    assert ray_compat.submitted_job_env_vars() == {}


def test_checkpoint_names_are_ray_trains_and_sort_by_age():
    first = ray_compat.checkpoint_dir_name()
    time.sleep(0.002)
    second = ray_compat.checkpoint_dir_name()
    assert first.startswith(ray_compat.CHECKPOINT_PREFIX) and second.startswith(ray_compat.CHECKPOINT_PREFIX)
    assert first < second  # list_checkpoints and pick_checkpoint rely on name order = age


def test_the_experiment_state_manager_still_has_the_method_rewarm_wraps():
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    params = inspect.signature(_ExperimentCheckpointManager.sync_up_experiment_state).parameters
    assert {"save_fn", "force", "wait"} <= set(params), params
    # The wrapper waits on `self._storage.syncer`, which the manager itself waits on too.
    assert "self._storage.syncer.wait()" in inspect.getsource(_ExperimentCheckpointManager)
    assert ray_compat.serialize_state_uploads()


def test_tune_names_its_trial_tables_with_the_prefix_rewarm_reads():
    """The resume check finds a save's files, and an upload renames its trial table last, by it."""
    from ray.tune.execution.tune_controller import TuneController

    assert TuneController.CKPT_FILE_TMPL == ray_compat.TUNE_STATE_PREFIX + "{}.json"


@pytest.mark.ray
def test_a_failed_task_is_unwrapped_to_its_own_exception(local_ray):
    @local_ray.remote(max_retries=0)
    def fails():
        raise KeyError("the cause")

    with pytest.raises(Exception) as info:
        local_ray.get(fails.remote())
    cause = ray_compat.unwrap_task_error(info.value)
    assert isinstance(cause, KeyError) and "the cause" in str(cause)
    assert ray_compat.unwrap_task_error(ValueError("not a task error")) is None



@pytest.mark.ray
def test_a_restored_tuner_hands_back_the_callbacks_it_was_pickled_with(local_ray, tmp_path):
    from ray import tune

    class Marker(tune.Callback):
        pass

    def trainable(config):
        tune.report({"x": 1})

    tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=1),
               run_config=tune.RunConfig(name="canary", storage_path=str(tmp_path), callbacks=[Marker()],
                                         verbose=0)).fit()
    assert tune.Tuner.can_restore(str(tmp_path / "canary"))
    restored = tune.Tuner.restore(str(tmp_path / "canary"), trainable=trainable)
    callbacks = ray_compat.restored_callbacks(restored)
    assert callbacks is not None, "Tuner._local_tuner.get_run_config() moved: fix ray_compat.restored_callbacks"
    assert any(type(cb).__name__ == "Marker" for cb in callbacks), callbacks


def test_optuna_search_keeps_its_trials_completions_and_study_where_rewarm_reads_them():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=lambda trial: trial.suggest_float("x", 0, 1) and None, metric="m", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("t1")
    trials, completed, study = ray_compat.optuna_search_state(searcher)
    assert set(trials) == {"t1"} and isinstance(trials["t1"], optuna.trial.Trial)
    searcher.on_trial_complete("t1", {"m": 1.0})
    assert completed == {"t1"} and isinstance(study, optuna.Study) and study.trials[0].value == 1.0


def test_ray_prints_raylet_notices_through_the_function_rewarm_filters(capsys):
    import logging

    import ray._private.worker as worker

    assert ray_compat.drop_driver_notices(("have been started on node",))
    worker.print_to_stdstream({"lines": ["WARNING: 9 PYTHON worker processes have been started on node: x"],
                               "pid": "raylet", "is_err": False}, ignore_prefix=False)
    worker.print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False},
                              ignore_prefix=False)
    out = capsys.readouterr().out
    assert "have been started" not in out and "A worker died or was killed" in out
    import ray._private.authentication.authentication_token_setup as token_setup

    assert token_setup.logger is logging.getLogger(ray_compat.TOKEN_AUTH_LOGGER)
    assert inspect.getsource(token_setup).count("Token authentication is enabled") == 1


def test_a_train_worker_hands_on_its_reports_through_the_queue_poll_status_reads_first():
    """What `wait_for_reports_collected` relies on: each worker's reports wait in the queue its
    train context returns, and `poll_status` takes from it before asking whether the training
    thread runs (the order that loses a report put as the thread ends). Outside a worker the
    wait returns at once."""
    import inspect

    from ray.train.v2._internal.execution.context import TrainContext
    from ray.train.v2._internal.execution.worker_group.worker import RayTrainWorker

    assert callable(TrainContext.get_result_queue)
    source = inspect.getsource(RayTrainWorker.poll_status)
    assert source.index("result_queue.get_nowait()") < source.index("training_thread_runner.is_running()")
    assert ray_compat.wait_for_reports_collected(timeout_s=0.1) is True
