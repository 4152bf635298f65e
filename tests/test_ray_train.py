"""Runs on Ray Train workers (local Ray): DDP, resume through Ray, divergence from the CLI."""

import json
import subprocess

import pytest
import yaml

from sweeps.execution.single_run import read_curve, run_single
from tests.conftest import small_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _key(curve):
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in curve]


def test_two_worker_ddp_run_learns_and_matches_one_worker(local_ray, toy_world, tmp_path):
    two = run_single(small_spec(tmp_path, resources={"workers_per_trial": 2}), run_name="ddp2")
    one = run_single(small_spec(tmp_path), run_name="ddp1")
    assert two.metrics["world_size"] == 2 and one.metrics["world_size"] == 1
    assert two.status == one.status == "completed"
    c2, c1 = read_curve(two.run_dir), read_curve(one.run_dir)
    assert len(c2) == len(c1) == two.metrics["step"]
    losses = [r["loss"] for r in c2]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert two.metrics["gain"] > 0
    # Same global batch split over two ranks: the same optimisation up to float reduction order.
    for a, b in zip(c1[:8], c2[:8]):
        assert a["lr"] == b["lr"] and a["loss"] == pytest.approx(b["loss"], abs=2e-3)
    # On a local cluster a Train run starts no idle actors (trainers/ray_compat.py: an idle
    # DatasetManager, a preemption watcher with nothing to watch): each is a process start.
    from ray.util.state import list_actors

    started = {a.class_name for a in list_actors(address=local_ray.get_runtime_context().gcs_address, limit=10000)}
    assert "TrainController" in started and not started & {"DatasetManager", "PreemptionWatcher"}, started


def test_stop_and_resume_through_ray_equals_uninterrupted(local_ray, toy_world, tmp_path):
    spec = small_spec(tmp_path)
    full = run_single(spec, run_name="full")
    part = run_single(spec, run_name="part", stop_after_step=10)
    assert part.status == "stopped" and part.metrics["step"] == 10
    resumed = run_single(spec, run_name="part")  # same name: Ray Train restores the run
    assert resumed.timings["resumed_from_step"] == 10
    assert resumed.status == "completed"
    assert _key(read_curve(resumed.run_dir)) == _key(read_curve(full.run_dir))
    assert resumed.metrics["L_down"] == full.metrics["L_down"]
    # Each run is one MLflow run, like a sweep trial; "part" was continued, not duplicated.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(spec.tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`rewarm.kind` = 'run'")
    by_name = {}
    for r in runs:
        by_name.setdefault(r.data.tags["rewarm.trial_id"], []).append(r)
    assert sorted(by_name) == ["full", "part"] and all(len(v) == 1 for v in by_name.values())
    for name in ("full", "part"):
        (run,) = by_name[name]
        assert run.info.status == "FINISHED" and run.data.tags["rewarm.status"] == "completed"
        assert run.data.params["knob.max_lr"] == "0.003" and "training.global_batch_size" in run.data.params
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, full.metrics["step"] + 1))  # every step once, across the resume
        assert run.data.metrics["final/L_down"] == pytest.approx(full.metrics["L_down"])
        assert client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert {"checkpoints/final", "checkpoints/best"} <= {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}


def test_rewarm_train_from_scratch(local_ray, toy_world, tmp_path):
    """model.init: random through `rewarm train`'s own path (a Ray task), tracked like any run."""
    import math

    from mlflow.tracking import MlflowClient

    spec = small_spec(tmp_path, model={"init": "random"})
    run = run_single(spec, run_name="scratch")
    assert run.status == "completed"
    assert read_curve(run.run_dir)[0]["loss"] == pytest.approx(math.log(512), abs=0.1)  # fresh weights
    assert run.metrics["forgetting"] > 1.0  # measured against the pretrained base, which knows upstream
    client = MlflowClient(spec.tracking_uri())
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                       filter_string="tags.`rewarm.kind` = 'run'")
    assert mlflow_run.data.params["model.init"] == "random"


def test_resuming_with_other_knobs_is_refused(local_ray, toy_world, tmp_path):
    from sweeps.execution.failures import RunFailed

    run_single(small_spec(tmp_path), run_name="r", stop_after_step=4)
    other = small_spec(tmp_path, search_space={"params": {"max_lr": 1e-3, "warmup_frac": 0.1, "replay_ratio": 0.25,
                                                          "schedule": "cosine"}})
    with pytest.raises(RunFailed, match="different configuration"):
        run_single(other, run_name="r")


def test_diverging_run_exits_3_with_one_line(toy_world, tmp_path, rewarm_bin, cluster_env):
    spec = small_spec(tmp_path).model_dump(mode="json")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([rewarm_bin, "train", str(tmp_path / "s.yaml"), "--set", "max_lr=50",
                           "--set", "warmup_frac=0", "--run-name", "boom"],
                          capture_output=True, text=True, cwd=tmp_path, env=cluster_env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("rewarm: error:")]
    assert len(errors) == 1 and "diverged at step" in errors[0] and "lower max_lr" in errors[0]
    assert "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "runs" / "boom" / "summary.json").read_text())
    assert summary["metrics"]["status"] == "diverged"
