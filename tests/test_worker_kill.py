"""SIGKILL the process that trains a trial, mid-trial: the trial resumes from its latest checkpoint
and its curves equal an uninterrupted run's; MLflow has one child run with every step exactly once.

Both kinds of trial: a single-worker trial trains in its Tune trial process (Tune retries it), a
two-worker trial on Ray Train workers (Train restarts its worker group), with DDP and with FSDP
(sharded checkpoints)."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.config.loading import load_spec
from sweeps.execution.single_run import run_single
from tests.conftest import job_actor_pids, small_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS = 64
# The actor class of what trains: Tune's function trainable, or a Ray Train worker.
TRAINING_PROCESS = {1: "ImplicitFunc", 2: "RayTrainWorker"}


def _curve(path):
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.parametrize("workers, strategy", [(1, "ddp"), (2, "ddp"), (2, "fsdp")],
                         ids=["in-process", "ray-train", "ray-train-fsdp"])
def test_killed_worker_resumes_exactly(toy_world, tmp_path, rewarm_bin, cluster_env, workers, strategy):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = small_spec(tmp_path, name="killworker", budget={"num_trials": 1, "tokens_per_trial": 512 * STEPS},
                      training={"checkpoint_every_tokens": 512 * 8, "eval_every_tokens": 512 * 4},
                      resources={"workers_per_trial": workers, "cpus_per_worker": 1, "strategy": strategy},
                      scheduler={"kind": "none"}, tracking={"uri": uri, "experiment": "kill"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    # The sweep joins the session's cluster, where the reference run below runs too.
    proc = subprocess.Popen([rewarm_bin, "sweep", str(tmp_path / "s.yaml")], cwd=tmp_path, env=cluster_env,
                            stdout=open(tmp_path / "sweep.log", "w"), stderr=subprocess.STDOUT)
    killed_at = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and killed_at is None:
            curves = list((tmp_path / "runs" / "killworker" / "trials").glob("*/curves.jsonl"))
            if curves and len(curves[0].read_text().splitlines()) >= 20:
                pids = job_actor_pids(cluster_env["RAY_ADDRESS"], proc.pid, (TRAINING_PROCESS[workers],))
                assert len(pids) == workers
                os.kill(pids[-1], signal.SIGKILL)
                killed_at = len(curves[0].read_text().splitlines())
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.05)
        assert killed_at is not None and killed_at < STEPS, "trial finished before the worker could be killed"
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    trial_dir = next((tmp_path / "runs" / "killworker" / "trials").iterdir())
    attempts = [json.loads(x) for x in (trial_dir / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and 0 < attempts[1]["resumed_from_step"] <= killed_at  # resumed, not restarted

    # The spec's knobs are all fixed, so `rewarm train`'s code path reruns the same trial
    # uninterrupted (on the session's Ray cluster: a Ray task, or a Train worker group).
    reference = run_single(load_spec(tmp_path / "s.yaml"), run_name="reference", log=lambda *_: None)
    assert reference.status == "completed"
    assert _curve(trial_dir / "curves.jsonl") == _curve(reference.run_dir / "curves.jsonl")

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`rewarm.kind` = 'trial'")
    assert len(runs) == 1 and runs[0].data.tags["rewarm.status"] == "completed"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert steps == list(range(1, STEPS + 1))  # no gap, no duplicate across the restart
