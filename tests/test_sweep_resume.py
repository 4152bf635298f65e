"""`rewarm resume` after the sweep driver is SIGKILLed mid-sweep: nothing lost, nothing twice."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import small_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS = 48
# Trials per kind. In-process: the driver is killed inside the second of three trials (so the
# searcher's history must survive too: the third is suggested after the resume). Ray Train:
# inside the only trial (what is new there is that a restored Train run resumes; the searcher
# is the same).
TRIALS = {1: 3, 2: 1}
# Both cases of cluster: the in-process sweep starts a private local cluster, which dies with
# its driver (the embedded default: `rewarm sweep` without a cluster); the Ray Train sweep
# joins the session's cluster, which lives on after its driver (a user's cluster), and
# `rewarm resume` joins it again. (The shared case once resumed with a second trial beside the
# interrupted one, 2026-12-03: Tune's state files torn by a killed upload, fixed 2026-12-07;
# README, Reliability.)
SHARED_CLUSTER = {1: False, 2: True}


def _children(uri):
    client = MlflowClient(uri)
    exps = client.search_experiments()
    if not exps:
        return []
    return client.search_runs([e.experiment_id for e in exps], filter_string="tags.`rewarm.kind` = 'trial'")


def _last_status(trial_dir):
    reports = trial_dir / "reports.jsonl"
    lines = reports.read_text().splitlines() if reports.exists() else []
    return json.loads(lines[-1])["status"] if lines else None


def _steps_done(trial_dir) -> int:
    curves = trial_dir / "curves.jsonl"
    return len(curves.read_text().splitlines()) if curves.exists() else 0


def _mid_trial(trials_dir, after_an_ended_trial: bool) -> bool:
    """A trial is past its first checkpoint and in the first half of its steps (and, if asked,
    another has ended). Not near its end: a driver killed in the instant Tune suggests the
    next trial loses that trial (README, Reliability: a known gap), which this test is not about."""
    dirs = [d for d in trials_dir.iterdir() if d.is_dir()] if trials_dir.exists() else []
    ended = [d for d in dirs if _last_status(d) == "completed"]
    running = [d for d in dirs if _last_status(d) == "running" and any(d.glob("checkpoint_*"))
               and _steps_done(d) <= STEPS // 2]
    return (bool(ended) or not after_an_ended_trial) and bool(running)


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "ray-train"])
def test_killed_driver_resumes_without_duplicates(toy_world, tmp_path, rewarm_bin, request, workers, capsys):
    trials = TRIALS[workers]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = small_spec(tmp_path, name="resumable", search_space={"name": "default", "params": {}},
                      budget={"num_trials": trials, "max_concurrent": 1, "tokens_per_trial": 512 * STEPS},
                      resources={"workers_per_trial": workers, "cpus_per_worker": 1},
                      scheduler={"kind": "none"}, tracking={"uri": uri, "experiment": "resume"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    if SHARED_CLUSTER[workers]:
        env, private_ray = request.getfixturevalue("cluster_env"), None
    else:
        private_ray = request.getfixturevalue("private_ray")
        env = private_ray.env({k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    MlflowClient(uri).search_experiments()  # create the store here: two processes migrating one SQLite file race
    proc = subprocess.Popen([rewarm_bin, "sweep", str(tmp_path / "s.yaml")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not _mid_trial(tmp_path / "runs" / "resumable" / "trials", after_an_ended_trial=trials > 1):
            assert proc.poll() is None, "sweep ended before it could be interrupted"
            assert time.time() < deadline, "no trial ended within 300 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        if private_ray:  # a local cluster dies with its driver
            private_ray.kill()
    before = {r.data.tags["rewarm.trial_id"]: r.data.tags["rewarm.status"] for r in _children(uri)}
    assert any(s == "running" for s in before.values())  # the killed driver left a trial mid-way

    resumed = subprocess.run([rewarm_bin, "resume", "resumable", "--storage-path", str(tmp_path / "runs")],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    if private_ray:
        private_ray.kill()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = _children(uri)
    ids = [r.data.tags["rewarm.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == trials  # every planned trial, none duplicated
    assert set(before) <= set(ids)  # the interrupted trials were continued, not replaced
    assert all(r.info.status != "RUNNING" and r.data.tags["rewarm.status"] == "completed" for r in runs)
    knobs = {tuple(r.data.params[f"knob.{k}"] for k in ("max_lr", "warmup_frac", "replay_ratio")) for r in runs}
    assert len(knobs) == trials  # the searcher's history was kept: no config suggested twice
    for r in runs:  # curves continued in the same run: every step exactly once
        steps = [m.step for m in MlflowClient(uri).get_metric_history(r.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, STEPS + 1))
    # `rewarm best` (MLflow alone) agrees with what each trial reported to Tune (its report log).
    from sweeps.cli import main

    capsys.readouterr()
    assert main(["best", "--sweep", "resumable", "--tracking-uri", uri, "--format", "json", "--top", "10"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == trials
    for row in rows:
        reports = (tmp_path / "runs" / "resumable" / "trials" / row["trial_id"] / "reports.jsonl").read_text()
        assert row["objective"] == pytest.approx(json.loads(reports.splitlines()[-1])["objective"])
    assert rows[0]["objective"] == max(r["objective"] for r in rows)
    parents = MlflowClient(uri).search_runs([runs[0].info.experiment_id], filter_string="tags.`rewarm.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # The resumed driver's end-of-sweep bookkeeping went through the callback Tune restored and
    # fed with trial events (driver_timings.json is written from it), not through an idle copy.
    timings = json.loads((tmp_path / "runs" / "resumable" / "driver_timings.json").read_text())
    assert set(before) & set(timings), (sorted(before), sorted(timings))
    # The Optuna study continued too: each Tune trial once, every one ended as MLflow says,
    # and its knobs are the run's (a trial Tune never saved would be FAIL, not left RUNNING).
    import optuna

    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    told = {t.user_attrs.get("tune_trial_id"): t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert set(told) == set(ids) and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for r in runs:
        trial = told[r.data.tags["rewarm.trial_id"]]
        assert trial.user_attrs["rewarm_status"] == "completed"
        assert trial.params["max_lr"] == pytest.approx(float(r.data.params["knob.max_lr"]))
