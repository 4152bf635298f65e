"""Spec validation: shipped specs pass; bad ones fail with one line naming the field."""

import subprocess
from pathlib import Path

import pytest
import yaml

from sweeps.config.loading import SpecError, load_spec, validate_spec
from tests.conftest import changed

SPECS = sorted((Path(__file__).resolve().parents[1] / "sweeps" / "specs").glob("*.yaml"))
MINIMAL = {"name": "t", "search_space": {"params": {"max_lr": 3e-3, "warmup_frac": 0.01,
                                                    "replay_ratio": 0.05, "schedule": "cosine"}}}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_validate(path):
    spec = load_spec(path)
    assert spec.steps_per_trial >= 1


def test_smoke_spec_is_a_single_run():
    assert load_spec(SPECS[0].with_name("smoke.yaml")).fixed_knobs() is not None


def test_set_overrides_knobs_and_dotted_fields():
    spec = load_spec(SPECS[0].with_name("smoke.yaml"),
                     ["max_lr=6e-3", "replay_ratio=0.25", "training.micro_batch_size=4", "schedule=wsd"])
    assert spec.fixed_knobs() == {"max_lr": 6e-3, "replay_ratio": 0.25, "warmup_frac": 0.01, "schedule": "wsd"}
    assert spec.training.micro_batch_size == 4


def _with(path, value):
    return changed(MINIMAL, {path: value})


BAD = [
    (_with("colour", "red"), "colour: unknown key"),
    (_with("training.learning_rate", 1), "training.learning_rate: unknown key"),
    (_with("training.micro_batch_size", "eight"), "training.micro_batch_size"),
    (_with("search_space.params.max_lr", 0), "search_space.params.max_lr: must be > 0"),
    (_with("search_space.params.max_lr", -3e-4), "search_space.params.max_lr: must be > 0"),
    (_with("search_space.params.warmup_frac", 1.5), "search_space.params.warmup_frac: must lie in [0, 1]"),
    (_with("search_space.params.replay_ratio", -0.1), "search_space.params.replay_ratio: must lie in [0, 1]"),
    (_with("search_space.params.replay_ratio", {"type": "uniform", "low": 0, "high": 2}), "replay_ratio: must lie in [0, 1]"),
    (_with("search_space.params.schedule", "linear"), "search_space.params.schedule: must be one of"),
    (_with("search_space.params.momentum", 0.9), "unknown knob"),
    (_with("search_space.name", "nope"), "search_space.name: unknown search space 'nope'"),
    (_with("search_space.params.max_lr", {"type": "loguniform", "low": 1e-3, "high": 1e-4}), "low"),
    (_with("data.seq_len", 4096), "data.seq_len (4096) exceeds the model's maximum"),
    (_with("training.global_batch_size", 12), "multiple of training.micro_batch_size"),
    (_with("budget.tokens_per_trial", 10), "less than one step"),
    (_with("objective.kind", "constrained"), "max_forgetting is required"),
    (_with("objective.kind", "best"), "objective.kind"),
    (_with("name", "a b/c"), "name: use letters"),
    (_with("model.name_or_path", "someone/unknown-model"), "model.pretrain_max_lr is needed"),
    (_with("toy_world.shift", 2.0), "toy_world.shift"),
    (changed(MINIMAL, {"scheduler.kind": "rewarm", "scheduler.forecast": True, "objective.task": "next_word",
                      "tasks": [{"name": "next_word", "path": "toy:next_word"}]}),
     "scheduler.forecaster 'law' forecasts losses"),
    (_with("scheduler.forecaster", "oracle"), "scheduler.forecaster"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_specs_name_the_field(raw, message):
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_unreadable_yaml_is_one_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML at line"):
        load_spec(p)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_mlflow_env_overrides_spec(monkeypatch):
    spec = validate_spec(_with("tracking.uri", "http://127.0.0.1:1"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert spec.tracking_uri() == "http://127.0.0.1:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    assert spec.tracking_uri() == "sqlite:////tmp/x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert validate_spec(MINIMAL).tracking_uri().startswith("sqlite:////")


@pytest.mark.parametrize("command", ["validate", "train"])
def test_cli_bad_spec_exits_2_with_one_line_before_ray(tmp_path, rewarm_bin, command):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_with("search_space.params.warmup_frac", 3)))
    proc = subprocess.run([rewarm_bin, command, str(p)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rewarm: error:") and "warmup_frac" in lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "rewarm_runs").exists()


def test_train_refuses_unfixed_knobs(tmp_path, rewarm_bin):
    demo = SPECS[0].with_name("demo.yaml")
    proc = subprocess.run([rewarm_bin, "train", str(demo)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "needs every knob fixed" in proc.stderr
