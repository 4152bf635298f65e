"""SIGKILL the process that trains a trial, mid-trial: the trial resumes from its latest checkpoint
and its curves equal an uninterrupted run's; MLflow has one child run with every step exactly once.

Both kinds of trial: a single-worker trial trains in its Tune trial process (Tune retries it), a
two-worker trial on Ray Train workers (Train restarts its worker group), with DDP and with FSDP.
The FSDP case is also the test of FSDP on Ray Train: sharded checkpoints in the trial's run
dir, and a base reference that the sweep measures on a worker group like its trials'. (That
FSDP matches DDP is tests/test_parallel.py's, on plain processes, as is an FSDP run stopped
and continued there; a Train run restored after its driver died is tests/test_sweep_resume.py's.)"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sweeps.config.loading import load_spec
from sweeps.config.resolve import base_reference_key, measure_here, resolve, trial_config
from tests.conftest import job_actor_pids, small_spec
from trainers.checkpoint_files import is_sharded_checkpoint
from trainers.local import run_distributed
from trainers.run_dir import CURVES_FILE, list_checkpoints
from trainers.toyworld import default_cache_dir
from trainers.worker import train_in_process

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS = 64
# The actor class of what trains: Tune's function trainable, or a Ray Train worker.
TRAINING_PROCESS = {1: "ImplicitFunc", 2: "RayTrainWorker"}


def _points(rows):
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows]


def _curve(path):
    return _points(map(json.loads, path.read_text().splitlines()))


def _uninterrupted_curve(tmp_path, workers: int):
    """The same trial (the spec fixes every knob) run through without a kill, by the same loop:
    one worker by the function a Tune trial calls, two on local gloo ranks (a Ray Train worker
    group's start costs ~10 s on 2 cores; the ranks are forked from a preloaded server)."""
    spec = load_spec(tmp_path / "s.yaml").anchored()
    cfg = trial_config(resolve(spec), spec.fixed_knobs(), run_dir=tmp_path / "reference")
    if workers == 1:
        threads = torch.get_num_threads()
        try:
            train_in_process(cfg, use_gpu=False)
        finally:
            torch.set_num_threads(threads)  # train_in_process sets the trial's thread count
        return _curve(cfg.run_dir / CURVES_FILE)
    return _points(run_distributed(cfg, workers).steps)


def _forget_base_reference(spec) -> str:
    """Drop the cached base reference of this spec's trials, so the sweep must measure it;
    returns its key. Resolved as a single-worker spec (measured in this process if missing,
    ~1 s): the key is then taken with this spec's own resources. No other test's trials share
    this key (FSDP over two workers, the default eval batch), so no test running beside loses
    a reference it is about to read."""
    one_worker = spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"workers_per_trial": 1, "strategy": "ddp"})})
    key = base_reference_key(dataclasses.replace(resolve(one_worker), spec=spec))
    cache = default_cache_dir() / "base_reference"
    (cache / f"{key}.json").unlink(missing_ok=True)
    shutil.rmtree(cache / "worker_groups" / f"base-{key}", ignore_errors=True)
    return key


def _assert_measured_on_a_worker_group(spec, key: str, tmp_path) -> None:
    """The sweep measured its base reference on a worker group like its trials' (Ray Train
    left that group's run dir), and it equals this process's measurement (CPU both: the same
    numerics)."""
    cache = default_cache_dir() / "base_reference"
    resolved = resolve(spec)  # cached now: the sweep measured it
    assert base_reference_key(resolved) == key and (cache / f"{key}.json").exists()
    assert (cache / "worker_groups" / f"base-{key}").is_dir()
    here = measure_here(dataclasses.replace(resolved, base_reference=None), tmp_path / "here.json")
    assert resolved.base_reference.L_up == pytest.approx(here.L_up, abs=1e-5)
    assert resolved.base_reference.L_down == pytest.approx(here.L_down, abs=1e-5)


@pytest.mark.parametrize("workers, strategy", [(1, "ddp"), (2, "ddp"), (2, "fsdp")],
                         ids=["in-process", "ray-train", "ray-train-fsdp"])
def test_killed_worker_resumes_exactly(toy_world, tmp_path, rewarm_bin, cluster_env, workers, strategy):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = small_spec(tmp_path, name="killworker", budget={"num_trials": 1, "tokens_per_trial": 512 * STEPS},
                      training={"checkpoint_every_tokens": 512 * 8, "eval_every_tokens": 512 * 4},
                      resources={"workers_per_trial": workers, "cpus_per_worker": 1, "strategy": strategy},
                      scheduler={"kind": "none"}, tracking={"uri": uri, "experiment": "kill"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    base_key = _forget_base_reference(spec) if strategy == "fsdp" else None
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
                if strategy == "fsdp":  # (the sweep's end reclaims them: read them here)
                    checkpoints = list_checkpoints(curves[0].parent)
                    assert checkpoints and all(is_sharded_checkpoint(c) for c in checkpoints), checkpoints
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

    assert _curve(trial_dir / "curves.jsonl") == _uninterrupted_curve(tmp_path, workers)
    if base_key is not None:
        _assert_measured_on_a_worker_group(spec, base_key, tmp_path)

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`rewarm.kind` = 'trial'")
    assert len(runs) == 1 and runs[0].data.tags["rewarm.status"] == "completed"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert steps == list(range(1, STEPS + 1))  # no gap, no duplicate across the restart
