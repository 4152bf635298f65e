"""Only tracking outages are ridden out; any other failure of a tracking call is a bug and raises."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from sweeps.tracking.store import TrackingError, is_outage
from sweeps.tracking.tracker import LoggedMarks, Tracker
from sweeps.tracking.trial_sync import TrialSync


@pytest.mark.parametrize("exc, outage", [
    (MlflowException("API request to http://x failed with exception ConnectionRefused"), True),  # INTERNAL_ERROR
    (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), True),
    (TrackingError("unreachable"), True),
    (ConnectionResetError(), True),
    (PermissionError("artifact dir not writable"), False),  # a set-up problem, not an outage
    (MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE), False),
    (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), False),
    (KeyError("step"), False),
    (TypeError("a bug"), False),
])
def test_outage_classification(exc, outage):
    assert is_outage(exc) is outage


def _sync(tmp_path, uri):
    (tmp_path / "trials" / "t1").mkdir(parents=True)
    (tmp_path / "trials" / "t1" / "curves.jsonl").write_text('{"step": 1, "loss": 2.0, "lr": 0.001}\n')
    return TrialSync(Tracker(uri, "errors", "errors"), tmp_path / "trials", {}, log_interval_s=0.0, log=lambda m: None)


def test_an_unreachable_server_is_an_outage_ridden_out(tmp_path, monkeypatch):
    from sweeps.settings import PROCESS_SETTINGS

    for key, value in PROCESS_SETTINGS.items():  # as the CLI runs: fail fast, no minutes of retries
        monkeypatch.setenv(key, value)
    sync = _sync(tmp_path, "http://127.0.0.1:9")  # nothing listens on port 9
    assert sync.sync("t1") is False and sync._in_outage


def test_a_refused_request_is_a_bug_and_raises(tmp_path):
    sync = _sync(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    sync.tracker.parent_run_id = "no-such-parent"
    sync._runs["t1"] = ("no-such-run", LoggedMarks(0, 0))
    with pytest.raises(MlflowException):
        sync.sync("t1")
