"""A sweep against a real `mlflow server` process backed by a real PostgreSQL server, read back
through `rewarm best` over HTTP; the runs are checked in Postgres itself."""

import json
import subprocess

import pytest
import yaml

from tests.conftest import SMALL_RUN, changed, require
from tests.mlflow_server import MlflowServer
from tests.postgres import PostgresServer, postgres_bin_dir

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def mlflow_on_postgres(tmp_path):
    require(postgres_bin_dir() is not None, "PostgreSQL (initdb, postgres)")
    pg = PostgresServer().start()
    server = None
    try:
        pg.sql("create database mlflow")
        server = MlflowServer(tmp_path, backend_uri=pg.uri("mlflow")).start()
        yield pg, server
    finally:
        if server:
            server.stop()
        pg.stop()


def test_sweep_against_mlflow_server_on_postgres(mlflow_on_postgres, tmp_path, toy_world, rewarm_bin, cluster_env,
                                                 capsys):
    pg, server = mlflow_on_postgres
    raw = changed(SMALL_RUN, {
        "name": "pgsweep", "storage_path": str(tmp_path / "runs"),
        "search_space.params": {"max_lr": 3e-3, "warmup_frac": 0.1, "schedule": "cosine",
                                "replay_ratio": {"type": "uniform", "low": 0.0, "high": 0.25}},
        "budget.num_trials": 2, "budget.max_concurrent": 2, "budget.tokens_per_trial": 512 * 8,
        "scheduler.kind": "none",
        # The study beside MLflow's tables, in the same PostgreSQL database (its own schema).
        "tracking": {"uri": server.uri, "experiment": "pg", "study_storage": pg.uri("mlflow")},
    })
    spec = tmp_path / "pg.yaml"
    spec.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([rewarm_bin, "sweep", str(spec)], env=cluster_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Rewarm's own lines only: MLflow prints no "View run ... at" for each run it closes.
    assert "View run" not in proc.stdout + proc.stderr and "View experiment" not in proc.stdout + proc.stderr

    from sweeps.cli import main  # `best` in this process: it reads the server alone

    capsys.readouterr()
    assert main(["best", "--sweep", "pgsweep", "--tracking-uri", server.uri, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    # The runs live in Postgres: the parent and both trials, all finished, with their curves.
    statuses = pg.sql("select status from runs order by status", db="mlflow").split()
    assert statuses == ["FINISHED"] * 3
    points = int(pg.sql("select count(*) from metrics where key = 'train/loss'", db="mlflow"))
    assert points == 2 * 8  # 8 steps per trial, each logged once
    # The Optuna study: both trials, finished, in schema optuna of the same database.
    states = pg.sql("select state from optuna.trials", db="mlflow").split()
    assert states == ["COMPLETE"] * 2
    import optuna

    from sweeps.tracking.study import load_sweep_study

    assert len(load_sweep_study(pg.uri("mlflow"), "pgsweep").get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
