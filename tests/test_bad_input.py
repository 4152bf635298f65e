"""Bad input at the command line: one line naming the field or cause, exit 2, no traceback,
and the tracking store untouched (no MLflow run created or changed)."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import SMALL_RUN, changed, seed_mlflow_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, toy_world, empty_mlflow_store):
    tmp = tmp_path_factory.mktemp("bad")
    seed_mlflow_store(tmp, empty_mlflow_store)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("existing")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "x", 1.0)
    client.set_terminated(run.info.run_id)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "notext.jsonl").write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(50)))
    (tmp / "afile").write_text("not a directory")
    return tmp, uri


def _spec(tmp, **changes):
    return changed({**SMALL_RUN, "storage_path": str(tmp / "runs")}, changes, sep="__")


def _write(tmp, name, raw):
    p = tmp / f"{name}.yaml"
    p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return str(p)


CASES = [
    # (id, command builder, expected fragment)
    ("unknown-key", lambda t: ["validate", _write(t, "a", _spec(t, colour="red"))], "colour: unknown key"),
    ("wrong-type", lambda t: ["validate", _write(t, "b", _spec(t, training__micro_batch_size="x"))], "training.micro_batch_size"),
    ("zero-lr", lambda t: ["validate", _write(t, "c", _spec(t, search_space__params__max_lr=0))], "max_lr: must be > 0"),
    ("negative-lr", lambda t: ["train", _write(t, "d", _spec(t)), "--set", "max_lr=-1e-3"], "max_lr: must be > 0"),
    ("warmup>1", lambda t: ["train", _write(t, "e", _spec(t)), "--set", "warmup_frac=1.5"], "warmup_frac: must lie in [0, 1]"),
    ("replay<0", lambda t: ["sweep", _write(t, "f", _spec(t)), "--set", "replay_ratio=-0.1"], "replay_ratio: must lie in [0, 1]"),
    ("unknown-schedule", lambda t: ["train", _write(t, "g", _spec(t)), "--set", "schedule=linear"], "schedule: must be one of"),
    ("unknown-space", lambda t: ["validate", _write(t, "h", _spec(t, search_space__name="nope"))], "unknown search space 'nope'"),
    ("seq-len-too-long", lambda t: ["train", _write(t, "i", _spec(t, data__seq_len=1024))], "exceeds the model's maximum"),
    ("bad-yaml", lambda t: ["validate", _write(t, "j", "name: [oops\n")], "invalid YAML"),
    ("missing-spec", lambda t: ["train", str(t / "nope.yaml")], "does not exist"),
    ("bad-set", lambda t: ["validate", _write(t, "k", _spec(t)), "--set", "max_lr"], "expected key=value"),
    ("missing-dataset", lambda t: ["train", _write(t, "l", _spec(t, data__downstream={"path": str(t / "gone.jsonl")}))],
     "data.downstream: data source"),
    ("empty-dataset", lambda t: ["train", _write(t, "m", _spec(t, data__downstream={"path": str(t / "empty.jsonl")}))],
     "empty (no documents)"),
    ("no-text-field", lambda t: ["sweep", _write(t, "n", _spec(t, data__upstream={"path": str(t / "notext.jsonl")}))],
     "no text field 'text'"),
    ("unwritable-storage", lambda t: ["train", _write(t, "o", _spec(t, storage_path=str(t / "afile" / "runs")))],
     "storage_path:"),
    ("too-many-workers", lambda t: ["train", _write(t, "p", _spec(t, resources={"workers_per_trial": 8},
                                                                    training={**SMALL_RUN["training"], "global_batch_size": 32}))],
     "resources: a trial needs 8 CPUs"),
    ("resume-missing-sweep", lambda t: ["resume", "no-such-sweep", "--storage-path", str(t / "runs")], "sweep 'no-such-sweep' not found"),
    ("best-missing-sweep", lambda t: ["best", "--sweep", "no-such-sweep"], "sweep 'no-such-sweep' not found"),
    ("unreachable-server", lambda t: ["sweep", _write(t, "q", _spec(t, tracking={"uri": "http://127.0.0.1:9"}))],
     "MLflow server at http://127.0.0.1:9 is unreachable"),
    ("pretrain-lr-unknown", lambda t: ["validate", _write(t, "r", _spec(t, model={"name_or_path": str(t)}))],
     "model.pretrain_max_lr is needed"),
    ("bad-objective", lambda t: ["validate", _write(t, "s", _spec(t, objective={"kind": "constrained"}))], "max_forgetting is required"),
]


def _db_state(uri):
    db = Path(uri.removeprefix("sqlite:///"))
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return hashlib.sha256(db.read_bytes()).hexdigest(), sorted((r.info.run_id, r.info.status, r.info.end_time) for r in runs)


# Cases that need Ray run as a subprocess that joins the session's cluster (as a user's command
# joins theirs; starting a cluster of its own would cost ~10 s), so the check is against a real
# cluster's resources and no Ray is started in the test process by the command.
NEEDS_RAY = {"too-many-workers"}


@pytest.mark.parametrize("case,build,fragment", [
    pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if c[0] in NEEDS_RAY else []) for c in CASES])
def test_bad_input_is_one_line_exit_2(workspace, rewarm_bin, case, build, fragment, monkeypatch, capfd, request):
    from sweeps.cli import main

    tmp, uri = workspace
    before = _db_state(uri)
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if case == "unreachable-server":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    if case in NEEDS_RAY:
        address = request.getfixturevalue("cluster_env")["RAY_ADDRESS"]  # first: it sets the cluster's auth env
        env = {**os.environ, "RAY_ADDRESS": address}
        proc = subprocess.run([rewarm_bin, *build(tmp)], capture_output=True, text=True, env=env)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code = main(build(tmp))
        out, err = capfd.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("rewarm: error:")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and fragment in errors[0], err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    assert _db_state(uri) == before


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused_with_exit_2(workspace, rewarm_bin, cluster_env, monkeypatch):
    from sweeps.cli import main

    tmp, uri = workspace
    spec = _write(tmp, "ckpt", _spec(tmp))
    env = cluster_env  # both commands join the session's cluster (the refusal is Rewarm's, not Ray's)
    # The run that leaves the checkpoints, in this process (what is under test is the refusal below).
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", spec, "--run-name", "broken", "--stop-after-steps", "8"]) == 0
    checkpoints = sorted(p for p in (tmp / "runs" / "broken").glob("checkpoint_*") if p.is_dir())
    assert checkpoints
    for ckpt in checkpoints:
        with open(ckpt / "model.safetensors", "r+b") as fh:
            fh.truncate(64)
    proc = subprocess.run([rewarm_bin, "train", spec, "--run-name", "broken"], capture_output=True, text=True,
                          cwd=tmp, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rewarm: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and "CheckpointError: no usable checkpoint" in errors[0]
    assert "model.safetensors is corrupt or truncated" in errors[0] and "Traceback" not in proc.stderr
