"""`rewarm resume` never starts a sweep over, and MLflow never links a checkpoint that does not load.

A finished sweep stored under the default relative storage path is resumed by its directory
from another working directory (it used to start a fresh sweep under the old parent run);
a wrong `--storage-path`, a directory without Tune's state and one whose state a killed
driver left empty are one-line errors (exit 2) that add nothing to MLflow; a trial whose
newest checkpoint is partial gets the newest good one linked.
"""

import os
import pickle
import shutil
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from sweeps.cli import main
from sweeps.config.layout import DEFAULT_STORAGE_PATH, SPEC_FILE
from sweeps.execution.callback import SweepCallback
from sweeps.execution.preflight import TUNE_STATE_GLOB
from sweeps.tracking.tracker import Tracker
from tests.conftest import small_spec


def _trial_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`rewarm.kind` = 'trial'")


@pytest.mark.ray
@pytest.mark.slow
def test_resume_from_elsewhere_continues_and_bad_locations_are_refused(local_ray, toy_world, tmp_path, monkeypatch,
                                                                        capsys):
    from sweeps.execution.driver import run_sweep

    started_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started_in.mkdir(), elsewhere.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(started_in)
    spec = small_spec(name="anchored", storage_path=DEFAULT_STORAGE_PATH,  # relative, as by default
                      search_space={"name": "default", "params": {}}, scheduler={"kind": "none"},
                      budget={"num_trials": 2, "max_concurrent": 2, "tokens_per_trial": 512 * 8})
    run_sweep(spec)
    uri = f"sqlite:///{started_in / 'mlflow.db'}"  # the default store, in the starting directory
    assert len(_trial_runs(uri)) == 2
    sweep_dir = started_in / DEFAULT_STORAGE_PATH / "anchored"
    assert f"storage_path: {sweep_dir.parent}\n" in (sweep_dir / SPEC_FILE).read_text()  # stored absolute

    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["resume", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 trials" in out, out
    assert len(_trial_runs(uri)) == 2  # Tune's finished state restored: no trial ran again
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / DEFAULT_STORAGE_PATH).exists()

    assert main(["resume", "anchored", "--storage-path", str(elsewhere / "wrong")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rewarm: error: sweep 'anchored' not found") and "\n" not in err, err

    stateless = elsewhere / "copied" / "anchored"  # spec.yaml alone: no Tune state to restore
    stateless.mkdir(parents=True)
    shutil.copy(sweep_dir / SPEC_FILE, stateless / SPEC_FILE)
    assert main(["resume", str(stateless)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no Tune experiment state" in err and str(stateless) in err and "\n" not in err, err

    torn = elsewhere / "torn" / "anchored"  # a driver killed while it saved: Tune would start over
    shutil.copytree(sweep_dir, torn)
    (newest,) = sorted(torn.glob(TUNE_STATE_GLOB))[-1:]
    newest.write_text("")
    assert main(["resume", str(torn)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"its Tune state {newest} is empty" in err and "\n" not in err, err
    assert len(_trial_runs(uri)) == 2  # nothing was added by the refused resumes


def test_partial_final_checkpoint_is_not_linked(resolved_small, tmp_path):
    from sweeps.config.resolve import trial_config
    from trainers.local import run_in_process

    knobs = {"max_lr": 3e-3, "warmup_frac": 0.1, "replay_ratio": 0.25, "schedule": "cosine"}
    cfg = trial_config(resolved_small, knobs)
    cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"stop_after_step": 12})})
    run = run_in_process(cfg, tmp_path / "run")
    trial_dir = tmp_path / "trials" / "t0001"
    trial_dir.mkdir(parents=True)
    for i, ckpt in enumerate(run.checkpoints):  # laid out as a trial's run dir: checkpoint_<time>, by age
        ckpt.rename(trial_dir / f"checkpoint_2026-01-01_00-00-{i:02d}")
    older, newest = sorted(p for p in trial_dir.iterdir() if p.name.startswith("checkpoint_"))[-2:]
    with open(newest / "model.safetensors", "r+b") as fh:  # a stop in the middle of its copy
        fh.truncate(10)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = small_spec(tmp_path, tracking={"uri": uri, "experiment": "partial"})
    tracker = Tracker(uri, "partial", spec.name)
    tracker.start_parent("{}", {}, {"L_up": 1.0, "L_down": 2.0}, {}, resume=False)
    lines = []
    callback = SweepCallback(tracker, spec, str(tmp_path / "trials"), {}, log=lines.append)
    trial = SimpleNamespace(trial_id="t0001", config=knobs, last_result={}, status="RUNNING")
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_complete(0, [trial], trial)
    callback.flush(10)

    (child,) = _trial_runs(uri)
    assert child.data.tags["rewarm.final_checkpoint"] == str(older)
    assert any("not linking" in line and str(newest) in line and "corrupt" in line for line in lines), lines
    assert os.path.exists(older / "model.safetensors")


@pytest.mark.parametrize("cut, problem", [
    ("experiment_state", "is empty"), ("experiment_state", "is cut short (not JSON)"),
    ("searcher-state", "is cut short (not a whole pickle)"), ("search_gen_state", "is empty")])
def test_a_save_cut_by_a_killed_driver_is_refused_not_restarted(tmp_path, cut, problem):
    """Tune restores from its newest save and, finding any of its files empty or cut, starts
    the sweep over; check_resumable refuses it instead, naming the file. Older saves are not
    read, so a cut one of those is no reason to refuse."""
    from sweeps.config.loading import SpecError
    from sweeps.execution.preflight import check_resumable

    stamp, older = "2026-12-07_21-59-44", "2026-12-07_21-58-54"
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    for s in (older, stamp):
        (tmp_path / f"experiment_state-{s}.json").write_text('{"trial_data": []}')
        (tmp_path / f"searcher-state-{s}.pkl").write_bytes(pickle.dumps({"searcher": 1}))
        (tmp_path / f"search_gen_state-{s}.json").write_bytes(pickle.dumps({"generator": 1}))
    (tmp_path / f"searcher-state-{older}.pkl").write_bytes(b"")
    spec = small_spec(name="cut")
    check_resumable(spec, tmp_path)  # the newest save is whole

    target = next(tmp_path.glob(f"{cut}-{stamp}.*"))
    whole = target.read_bytes()
    target.write_bytes(b"" if problem == "is empty" else whole[:-1])
    with pytest.raises(SpecError) as info:
        check_resumable(spec, tmp_path)
    assert f"its Tune state {target} {problem}" in str(info.value) and "\n" not in str(info.value)
