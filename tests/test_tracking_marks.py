"""A trial's step records and report points are logged past their own marks, on a real MLflow store.

The worker writes a step's record, then that step's report: a driver sync between the two
writes must not count the report as logged.
"""

import pytest
from mlflow.tracking import MlflowClient

from sweeps.tracking.tracker import LoggedMarks, Tracker


def step(s):
    return {"step": s, "loss": 4.0 - 0.1 * s, "lr": 1e-3, "tokens": 512 * s, "time": 1.0}


def report(s):
    return {"step": s, "L_up": 3.0, "L_down": 4.0 - 0.1 * s, "objective": 0.1 * s, "tokens": 512 * s}


def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "marks", "marks")
    t.parent_run_id = t.client.create_run(t.ensure_experiment()).info.run_id
    return t


def test_a_report_written_after_its_step_record_is_still_logged(tmp_path):
    t = tracker(tmp_path)
    run_id, marks = t.child_for_trial("t1", {"max_lr": 1e-3}, {})
    assert marks == LoggedMarks(0, 0)
    # First sync: steps 1-4 are on disk, the report of step 4 is not yet.
    marks = t.log_progress(run_id, [step(s) for s in range(1, 5)], [report(2)], marks)
    assert marks == LoggedMarks(4, 2)
    # Next sync: only the report is new.
    marks = t.log_progress(run_id, [], [report(4)], marks)
    assert marks == LoggedMarks(4, 4)
    history = MlflowClient(t.uri).get_metric_history(run_id, "eval/objective")
    assert sorted(m.step for m in history) == [2, 4]


def test_marks_survive_a_new_driver_and_nothing_is_logged_twice(tmp_path):
    t = tracker(tmp_path)
    run_id, marks = t.child_for_trial("t1", {}, {})
    t.log_progress(run_id, [step(s) for s in range(1, 7)], [report(3)], marks)
    # A resumed driver finds the run and its marks, then re-reads the files from the start.
    again, marks = Tracker(t.uri, "marks", "marks").child_for_trial("t1", {}, {})
    assert (again, marks) == (run_id, LoggedMarks(6, 3))
    t.log_progress(run_id, [step(s) for s in range(1, 9)], [report(3), report(6)], marks)
    client = MlflowClient(t.uri)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 9))
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/objective")) == [3, 6]


def test_points_sent_again_after_a_lost_write_are_kept_once(tmp_path):
    """A write whose rows reached MLflow but whose marks did not (an outage in between) is sent
    again on the next sync: each row carries its record's own time, so it is the same row."""
    t = tracker(tmp_path)
    run_id, marks = t.child_for_trial("t1", {}, {})
    steps, reports = [step(s) for s in range(1, 5)], [{**report(4), "time/report": 2.0}]
    t.log_progress(run_id, steps, reports, marks)
    # The marks were lost: the same points go again, here inside the run's closing write.
    again = t.finish_child(run_id, "completed", reports[-1], artifacts={}, progress=(steps, reports, marks))
    assert again == LoggedMarks(4, 4)
    client = MlflowClient(t.uri)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "eval/objective")] == [4]
    run = client.get_run(run_id)
    assert run.data.tags["rewarm.logged_step"] == "4" and run.data.tags["rewarm.status"] == "completed"
    assert run.info.status == "FINISHED"


def test_a_new_sweeps_sync_restored_by_resume_finds_its_trials_runs_again(tmp_path):
    """A new sweep's driver creates trial runs without searching MLflow first; the copy Tune
    pickled when the sweep started, restored by `rewarm resume`, must search (and continue)."""
    import pickle

    from sweeps.tracking.trial_sync import TrialSync

    t = tracker(tmp_path)
    live = TrialSync(t, tmp_path / "trials", {}, 0.0, log=lambda m: None, new_sweep=True)
    saved = pickle.dumps(live)  # as Tune saves its callbacks when the Tuner is made
    live.start("t1", {"max_lr": 1e-3})
    restored = pickle.loads(saved)
    restored.start("t1", {"max_lr": 1e-3})
    assert restored.run_id("t1") == live.run_id("t1")
    runs = MlflowClient(t.uri).search_runs([t.ensure_experiment()], filter_string="tags.`rewarm.trial_id` = 't1'")
    assert len(runs) == 1


def test_a_run_created_just_before_an_outage_is_found_again_and_gets_its_params(tmp_path, monkeypatch):
    """The first try of a new sweep's trial creates its run without searching; when the store
    goes away as it creates the run (the run is made, its reply is lost), the next try must
    find that run (not create a second) and log the params it lacks."""
    from requests.exceptions import ConnectionError as RequestsConnectionError

    from sweeps.tracking import trial_sync
    from sweeps.tracking.trial_sync import TrialSync

    monkeypatch.setattr(trial_sync, "OUTAGE_RETRY_S", 0.0)
    t = tracker(tmp_path)
    sync = TrialSync(t, tmp_path / "trials", {"model": "toy"}, 0.0, log=lambda m: None, new_sweep=True)
    real, created = t.client.create_run, []

    def reply_lost_once(*args, **kwargs):
        run = real(*args, **kwargs)
        if not created:
            created.append(run.info.run_id)
            raise RequestsConnectionError("tracking server went away")
        return run

    monkeypatch.setattr(t.client, "create_run", reply_lost_once)
    sync.start("t1", {"max_lr": 1e-3})
    assert created  # the run exists, the sync did not get its id
    with pytest.raises(KeyError):
        sync.run_id("t1")
    assert sync.sync("t1")
    runs = MlflowClient(t.uri).search_runs([t.ensure_experiment()], filter_string="tags.`rewarm.trial_id` = 't1'")
    assert [r.info.run_id for r in runs] == created
    assert runs[0].data.params == {"knob.max_lr": "0.001", "model": "toy"}


def test_a_new_runs_params_ride_on_its_first_write_and_survive_losing_it(tmp_path, monkeypatch):
    """No round trip of their own: a new run's params go in its first log_batch, with its first
    points; when that write is lost, the next one carries them again."""
    t = tracker(tmp_path)
    run_id, marks = t.child_for_trial("t1", {"max_lr": 1e-3}, {"model": "toy"})
    writes, real = [], t.client.log_batch

    def lost_once(rid, metrics=(), params=(), tags=(), **kwargs):
        writes.append((len(metrics), len(params)))
        if len(writes) == 1:
            raise ConnectionError("tracking server went away")
        return real(rid, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(t.client, "log_batch", lost_once)
    with pytest.raises(ConnectionError):
        t.log_progress(run_id, [step(1)], [], marks)
    marks = t.log_progress(run_id, [step(1), step(2)], [], marks)
    t.log_progress(run_id, [step(3)], [], marks)
    assert writes == [(2, 2), (4, 2), (2, 0)]  # loss and lr per step; the params until a write took them
    run = MlflowClient(t.uri).get_run(run_id)
    assert run.data.params == {"knob.max_lr": "0.001", "model": "toy"}
    # A run that ends before its first point (a trial failing at once) gets them when it is closed.
    other, _ = t.child_for_trial("t2", {"max_lr": 2e-3}, {"model": "toy"})
    t.finish_child(other, "failed", {}, artifacts={})
    assert MlflowClient(t.uri).get_run(other).data.params == {"knob.max_lr": "0.002", "model": "toy"}


def test_trials_closed_by_an_earlier_driver_are_not_sent_again_and_continue_from_their_marks(tmp_path, monkeypatch):
    """After `rewarm resume`, a trial an earlier driver closed is known by its run (retention,
    best-trial tags) but not synced again: its points are in MLflow. Should Tune run it once
    more (a failed trial), its run is found with its marks, not re-sent from step 0."""
    import pickle

    from sweeps.tracking.records import trial_record, trial_summary
    from sweeps.tracking.trial_sync import TrialSync
    from trainers.run_dir import CURVES_FILE, REPORTS_FILE, CurveLog

    t = tracker(tmp_path)
    first = TrialSync(t, tmp_path / "trials", {}, 0.0, log=lambda m: None, new_sweep=True)
    saved = pickle.dumps(first)
    (tmp_path / "trials" / "t1").mkdir(parents=True)
    CurveLog(tmp_path / "trials" / "t1" / CURVES_FILE).append([step(s) for s in range(1, 5)])
    CurveLog(tmp_path / "trials" / "t1" / REPORTS_FILE).append([{**report(4), "time/report": 2.0}])
    first.start("t1", {})
    first.finish("t1", "failed", {**report(4), "time/report": 2.0}, artifacts={}, files=[], tags={})
    run_id = first.run_id("t1")

    resumed = pickle.loads(saved)
    resumed.adopt_closed([trial_summary(trial_record(r)) for r in t.child_runs()])
    assert resumed.run_id("t1") == run_id
    writes, client = [], resumed.tracker.client  # its own client: the tracker was unpickled
    real = client.log_batch
    monkeypatch.setattr(client, "log_batch", lambda rid, **kw: (writes.append(rid), real(rid, **kw))[1])
    assert resumed.flush(timeout_s=5) == []
    assert run_id not in writes
    # Tune runs it again from its checkpoint at step 2: the steps after it are retrained.
    CurveLog(tmp_path / "trials" / "t1" / CURVES_FILE).truncate_after(2)
    CurveLog(tmp_path / "trials" / "t1" / CURVES_FILE).append([{**step(s), "time": 5.0} for s in range(3, 7)])
    resumed.start("t1", {})
    assert resumed.sync("t1") and resumed.run_id("t1") == run_id
    run = MlflowClient(t.uri).get_run(run_id)
    assert (run.info.status, run.data.tags["rewarm.status"]) == ("RUNNING", "running")  # open again, said so
    history = MlflowClient(t.uri).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # 3 and 4 once: below the run's mark


def test_a_trials_closing_write_carries_its_last_points_in_one_batch(tmp_path, monkeypatch):
    t = tracker(tmp_path)
    run_id, marks = t.child_for_trial("t1", {}, {})
    marks = t.log_progress(run_id, [step(1), step(2)], [], marks)
    writes, real = [], t.client.log_batch
    monkeypatch.setattr(t.client, "log_batch", lambda rid, **kw: (writes.append(len(kw.get("metrics") or [])),
                                                                   real(rid, **kw))[1])
    final = {**report(4), "time/report": 2.0}
    marks = t.finish_child(run_id, "completed", final, artifacts={},
                           progress=([step(s) for s in range(1, 5)], [final], marks))
    assert marks == LoggedMarks(4, 4) and len(writes) == 1  # steps 3-4, the report and the final metrics
    client = MlflowClient(t.uri)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "eval/objective")] == [4]
    run = client.get_run(run_id)
    assert (run.data.tags["rewarm.logged_step"], run.data.tags["rewarm.logged_report_step"]) == ("4", "4")
    assert run.data.metrics["final/objective"] == pytest.approx(0.4) and run.info.status == "FINISHED"
