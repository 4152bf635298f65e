"""`rewarm importance` on a sweep whose study was written by Rewarm's own searcher, from a
synthetic continual pre-training table where the answer is known: max LR drives gain, replay
drives forgetting, warmup drives nothing."""

import json
import math
import os
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.cli import main
from sweeps.execution.search import make_searcher
from sweeps.tracking.study import open_study_storage
from sweeps.tracking.tracker import Tracker
from tests.conftest import small_spec


def _sweep(tmp_path, name: str, trials: int, stopped_every: int = 0) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = small_spec(tmp_path, name=name, search_space={"name": "default", "params": {"schedule": "cosine"}},
                      budget={"num_trials": trials, "max_concurrent": 1}, tracking={"uri": uri}).anchored()
    tracker = Tracker(uri, "imp", name)
    params = spec.knob_params()
    tracker.start_parent(yaml.safe_dump(spec.model_dump(mode="json")), {}, {"L_up": 2.0, "L_down": 5.0},
                         {k: p.describe() for k, p in params.items()}, resume=False)
    searcher = make_searcher(spec, params, open_study_storage(spec.study_storage_url()))
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        gain = 1.0 + math.log10(config["max_lr"] / 1e-3)  # max LR alone decides gain
        forgetting = 0.8 * (1 - 3.5 * config["replay_ratio"])  # replay alone decides forgetting
        status = "running" if stopped_every and i % stopped_every == 0 else "completed"
        searcher.on_trial_complete(f"t{i}", {"tokens": 4096, "objective": gain - max(forgetting, 0), "gain": gain,
                                             "forgetting": forgetting, "status": status})
    return uri


def test_importance_finds_the_knob_behind_each_target(tmp_path, capsys, monkeypatch, rewarm_bin):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = _sweep(tmp_path, "known", trials=16, stopped_every=4)  # 4 stopped early: not counted
    capsys.readouterr()
    assert main(["importance", "--sweep", "known", "--tracking-uri", uri, "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 12 and result["fixed"] == {"schedule": "cosine"}
    imp = result["importance"]
    assert max(imp["gain"], key=imp["gain"].get) == "max_lr" and imp["gain"]["max_lr"] > 0.6
    assert max(imp["forgetting"], key=imp["forgetting"].get) == "replay_ratio"
    assert imp["forgetting"]["replay_ratio"] > 0.6
    assert all(v < 0.2 for v in (imp["gain"]["warmup_frac"], imp["forgetting"]["warmup_frac"]))
    for target in imp:
        assert sum(imp[target].values()) == pytest.approx(1.0)
    parent = MlflowClient(uri).get_run(result["parent_run_id"])
    assert parent.data.metrics["importance/gain/max_lr"] == pytest.approx(imp["gain"]["max_lr"])

    # The table, as a user runs it: a fresh process, whose stderr has nothing of Optuna's own.
    proc = subprocess.run([rewarm_bin, "importance", "--sweep", "known", "--tracking-uri", uri],
                          capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    table = proc.stdout
    assert "12 completed trials" in table and "schedule" in table and "fixed at cosine" in table
    # `rewarm -v` lets Optuna's own notices through, as it does Ray's and MLflow's.
    proc = subprocess.run([rewarm_bin, "-v", "importance", "--sweep", "known", "--tracking-uri", uri],
                          capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0 and "A new study created in memory" in proc.stderr, proc.stderr


def test_too_few_completed_trials_is_one_line_saying_how_many(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = _sweep(tmp_path, "tiny", trials=3)
    capsys.readouterr()
    assert main(["importance", "--sweep", "tiny", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 3 completed trials; knob importance needs at least 6" in err and "\n" not in err, err
