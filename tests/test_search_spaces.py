"""Contract tests run over every registered search space (as Optuna does for its samplers)."""

import optuna
import pytest

import search_spaces
from search_spaces.params import Choice, Fixed, LogUniform
from sweeps.config.resolve import trial_config
from sweeps.execution.search import OptunaSpace
from tests.conftest import small_spec
from trainers.schedules import ScheduleConfig

NAMES = sorted(search_spaces.REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_every_sample_of_every_space_builds_a_valid_run(name, resolved_small):
    spec = small_spec(search_space={"name": name, "params": {}})
    params = spec.knob_params()
    space = OptunaSpace(params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        constants = space(trial)
        knobs = {**trial.params, **constants}
        assert set(knobs) == set(search_spaces.KNOBS)
        cfg = trial_config(resolved_small, knobs)  # validates schedule, replay ratio, loop
        assert 0 <= cfg.replay_ratio <= 1 and cfg.schedule.max_lr > 0
        assert isinstance(cfg.schedule, ScheduleConfig)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_every_space_is_documented_and_complete(name):
    space = search_spaces.get(name)
    assert space.description and set(space.params) == set(search_spaces.KNOBS)


def test_paper_presets_scale_to_the_model():
    gupta = search_spaces.get("gupta2023")
    on_pythia = gupta.resolved(model_pretrain_lr=3e-4)
    assert on_pythia["max_lr"] == Choice(values=[1.5e-4, 3e-4, 6e-4])
    assert on_pythia["warmup_frac"] == Choice(values=[0.0, 0.005, 0.01, 0.02])
    assert on_pythia["replay_ratio"] == Fixed(value=0.0)
    on_toy = gupta.resolved(model_pretrain_lr=3e-3)  # the toy model was pre-trained at 10x
    assert on_toy["max_lr"].values == pytest.approx([1.5e-3, 3e-3, 6e-3])
    ibrahim = search_spaces.get("ibrahim2024").resolved(model_pretrain_lr=3e-4)
    assert ibrahim["replay_ratio"].values == [0.0, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5]
    assert ibrahim["max_lr"] == Fixed(value=3e-4) and ibrahim["warmup_frac"] == Fixed(value=0.01)


def test_spec_overrides_are_absolute_and_typed():
    spec = small_spec(search_space={"name": "default", "params": {
        "max_lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}, "schedule": ["cosine", "wsd"]}})
    params = spec.knob_params()
    assert params["max_lr"] == LogUniform(low=1e-4, high=1e-2)
    assert params["schedule"] == Choice(values=["cosine", "wsd"])


def test_pythia_models_get_their_pretraining_lr():
    spec = small_spec(model={"name_or_path": "EleutherAI/pythia-160m-deduped"}, data={"seq_len": 64})
    assert spec.pretrain_lr() == 6e-4


def test_optuna_space_refuses_a_parameter_type_it_cannot_search():
    class Normal:  # a new Param type that nobody taught OptunaSpace
        pass

    with pytest.raises(TypeError, match="Normal"):
        OptunaSpace({"max_lr": Normal()})
