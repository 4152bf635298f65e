"""A real MLflow server goes down mid-sweep and comes back: training goes on, nothing is lost."""

import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import small_spec
from tests.mlflow_server import MlflowServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# Per kind of trial (in-process, or a Ray Train worker group): enough training after the
# first logged point that steps are trained during the outage. A Ray Train trial starts in
# ~20 s, so its second trial would start training only after the outage: its only trial
# trains long enough instead.
TRIALS = {1: 2, 2: 1}
STEPS = {1: 96, 2: 160}
OUTAGE_S = 4


def _trial_runs(uri, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`rewarm.kind` = 'trial'") if exp else []


@pytest.fixture(scope="module")
def server(tmp_path_factory, empty_mlflow_store):
    """One server for both kinds of trial (a start costs ~8 s on 2 cores); each test takes it
    down and brings it back, and finds it up (started again if a failed test left it down)."""
    server = MlflowServer(tmp_path_factory.mktemp("outage_server"), empty_store=empty_mlflow_store)
    yield server
    server.stop()


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "ray-train"])
def test_server_outage_mid_sweep_loses_nothing(toy_world, tmp_path, rewarm_bin, cluster_env, workers, server):
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    experiment = f"outage-{workers}"
    spec = small_spec(tmp_path, name="outage", search_space={"name": "default", "params": {}},
                      budget={"num_trials": TRIALS[workers], "max_concurrent": 1, "tokens_per_trial": 512 * STEPS[workers]},
                      resources={"workers_per_trial": workers, "cpus_per_worker": 1},
                      scheduler={"kind": "none"},
                      # Every report point goes to MLflow at once, so the outage starts mid-trial and
                      # every write path (steps, reports, trial end) meets the dead server.
                      tracking={"uri": server.uri, "experiment": experiment, "log_interval_s": 0})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen([rewarm_bin, "sweep", str(tmp_path / "s.yaml")], cwd=tmp_path, env=cluster_env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            runs = _trial_runs(server.uri, experiment)
            if runs and MlflowClient(server.uri).get_metric_history(runs[0].info.run_id, "train/loss"):
                break  # the first trial is training and logging
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("first trial did not start logging")
        server.kill()  # down while trials train
        down_since = time.time()
        # Down for this long, then for the ~5 s the server takes to start again: both trials
        # (in-process) or most of the one (Ray Train) train meanwhile.
        time.sleep(OUTAGE_S)
        assert proc.poll() is None  # the sweep rides out the outage
        server.start()
        proc.wait(timeout=400)
        output = (tmp_path / "sweep.log").read_text()
        assert proc.returncode == 0, output[-3000:]
        assert "MLflow unavailable" in output and "Traceback" not in output
        # Read back from the same server process (it was restarted after the outage).
        runs = _trial_runs(server.uri, experiment)
        assert len(runs) == TRIALS[workers]
        client = MlflowClient(server.uri)
        for r in runs:
            assert r.info.status == "FINISHED" and r.data.tags["rewarm.status"] == "completed"
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train/loss"))
            assert steps == list(range(1, STEPS[workers] + 1))  # buffered points written once, none lost
        logged_late = [m for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss")
                       if m.timestamp / 1000 > down_since]
        assert logged_late  # some points were trained during the outage and logged after it
    finally:
        if proc.poll() is None:
            proc.kill()
