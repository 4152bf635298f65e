"""A real two-node Ray cluster on loopback (a head and a second node, one CPU each, trial slots on the second):
`rewarm sweep --address` and `ray job submit -- ... sweep` run on it, and every trial's
Train workers span both nodes (DDP over gloo between nodes), with checkpoints in a storage
path both nodes reach. Secrets in the environment must never reach MLflow.
"""

import json
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, SMALL_RUN, changed
from tests.ray_cluster import LocalRayCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECRETS = {"MLFLOW_TRACKING_PASSWORD": "pw-5f1c0ffee-never-log-me",
           "AWS_SECRET_ACCESS_KEY": "aws-9d8e7f-never-log-me", "HF_TOKEN": "hf_never_log_me_0123456789"}


@pytest.fixture(scope="module")
def cluster(toy_world):
    # As on a real cluster, the head runs the sweep driver only: trial drivers need a
    # `rewarm_trial_slot`, which only the second node has, and Train workers need a CPU each.
    c = LocalRayCluster([{"num_cpus": 1, "resources": {}},
                         {"num_cpus": 1, "resources": {"rewarm_trial_slot": 2}}])
    try:
        yield c.start()
    finally:
        c.stop()


def write_spec(tmp_path, name: str) -> tuple:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = changed(SMALL_RUN, {
        "name": name, "storage_path": str(tmp_path / "shared"),  # one filesystem path every node reaches
        "search_space.params": {"max_lr": 3e-3, "warmup_frac": 0.1, "schedule": "cosine",
                                "replay_ratio": {"type": "uniform", "low": 0.0, "high": 0.25}},
        "budget.num_trials": 1, "budget.max_concurrent": 1, "budget.tokens_per_trial": 512 * 12,
        "scheduler.kind": "none",
        "resources.workers_per_trial": 2, "resources.cpus_per_worker": 1,
        "tracking": {"uri": uri, "experiment": name},
    })
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, uri


def placement_records(sweep_dir) -> dict:
    out = {}
    for trial in sorted((sweep_dir / "trials").iterdir()):
        if trial.is_dir():
            out[trial.name] = {p.stem: json.loads(p.read_text()) for p in (trial / "placement").glob("*.json")}
    return out


def assert_spans_both_nodes(cluster, sweep_dir, uri, name, health_check_interval="0.1"):
    nodes = set(cluster.node_ids())
    assert len(nodes) == 2
    records = placement_records(sweep_dir)
    where = {trial: {role: r["node_id"] for role, r in roles.items()} for trial, roles in records.items()}
    # The sweep's Ray settings reached Train workers on both nodes, whose own environment lacks them.
    for trial, roles in records.items():
        for role in ("rank0", "rank1"):
            assert roles[role]["ray_settings"] == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": health_check_interval,
                                                   "RAY_TRAIN_V2_ENABLED": "1"}, (trial, role, roles[role])
    assert len(where) == 1, where
    for trial, roles in where.items():
        # Two workers, one CPU per node: each trial's DDP group spans both nodes.
        assert {roles["rank0"], roles["rank1"]} == nodes, (trial, roles)
        assert any(p.is_dir() for p in (sweep_dir / "trials" / trial).glob("checkpoint_*")), trial
    # Trial drivers ran on the second node (the only one with trial slots), not beside the sweep driver.
    head = cluster.head_node_id()
    assert {roles["trial_driver"] for roles in where.values()} == nodes - {head}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    children = [r for r in runs if r.data.tags.get("rewarm.kind") == "trial"]
    assert len(children) == 1 and all(r.data.tags["rewarm.status"] == "completed" for r in children)


def test_sweep_on_an_existing_cluster_spans_both_nodes_and_logs_no_secret(cluster, tmp_path, rewarm_bin):
    spec, uri = write_spec(tmp_path, "multinode")
    proc = subprocess.run([rewarm_bin, "sweep", str(spec), "--address", cluster.address],
                          env=cluster.env({**cluster.env(), **SECRETS}), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_spans_both_nodes(cluster, tmp_path / "shared" / "multinode", uri, "multinode")
    assert_no_secret_in_mlflow(uri, tmp_path)


def assert_no_secret_in_mlflow(uri: str, tmp_path):
    """Params, tags, metric keys and every artifact of every run: no secret value anywhere."""
    client = MlflowClient(uri)
    seen = 0
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            text = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)])
            for artifact in _all_artifacts(client, run.info.run_id):
                local = client.download_artifacts(run.info.run_id, artifact, str(tmp_path / "dl" / run.info.run_id))
                with open(local, "rb") as fh:
                    text += fh.read().decode("utf-8", "replace")
                seen += 1
            for secret in SECRETS.values():
                assert secret not in text, f"secret leaked into MLflow run {run.info.run_id}"
    assert seen > 0  # the scan did read artifacts (spec.yaml, summaries, checkpoints)
    raw_db = (tmp_path / "mlflow.db").read_bytes()
    assert not any(secret.encode() in raw_db for secret in SECRETS.values())


def _all_artifacts(client, run_id, path=None):
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _all_artifacts(client, run_id, info.path)
        else:
            yield info.path


def test_ray_job_submit_ships_the_working_dir(cluster, tmp_path, capsys):
    spec, uri = write_spec(tmp_path, "jobsweep")
    runtime_env = {
        # The project's code travels with the job; the cluster's image (here: this venv) has its dependencies.
        "working_dir": str(REPO),
        "excludes": [".venv", ".git", "rewarm_runs", "mlflow.db", "mlartifacts", "benchmarks/results", "*.pyc"],
        # A setting the job sets itself wins over Rewarm's default (and must not clash with it).
        "env_vars": {"MLFLOW_TRACKING_URI": uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    }
    submit = [str(cluster_bin("ray")), "job", "submit", "--address", cluster.dashboard_url,
              "--runtime-env-json", json.dumps(runtime_env), "--",
              "bash", "-c", f"python -c 'import sweeps; print(\"shipped code:\", sweeps.__file__)' && "
                            f"python -m sweeps.cli sweep {spec}"]
    for _ in range(12):
        proc = subprocess.run(submit, env=cluster.env(), capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        # The head's job agent can be briefly unavailable (e.g. just after another driver left).
        if "No available agent" not in out:
            break
        time.sleep(5)
    assert proc.returncode == 0 and "succeeded" in out, out[-4000:]
    # The job ran the copy of the code that travelled with it, not this checkout.
    shipped = next(line for line in out.splitlines() if line.startswith("shipped code:"))  # not the echoed command
    assert "working_dir_files" in shipped and str(REPO) not in shipped, shipped
    assert_spans_both_nodes(cluster, tmp_path / "shared" / "jobsweep", uri, "jobsweep", health_check_interval="0.2")
    # The results are read back from MLflow (with no Ray at all: tests/test_sweep_e2e.py).
    from sweeps.cli import main

    capsys.readouterr()
    assert main(["best", "--sweep", "jobsweep", "--tracking-uri", uri, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def cluster_bin(name: str):
    from pathlib import Path

    return Path(sys.executable).with_name(name)
