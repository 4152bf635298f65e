"""A trial's step records and report points are logged past their own marks, on a real MLflow store.

The worker writes a step's record, then that step's report: a driver sync between the two
writes must not count the report as logged.
"""

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
