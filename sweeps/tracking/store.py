"""The tracking store: its URI, whether it answers, and which failures are an outage."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from trainers.errors import UserError


class TrackingError(UserError, RuntimeError):
    """The tracking server or store cannot be used; the message names the URI and cause."""


# MLflow servers Rewarm starts (`rewarm ui`, the tests') run with this, unless the user's
# environment sets the variable: MLflow's job runner and its Huey consumers serve GenAI jobs
# (LLM judges, trace roll-ups) that a store of Rewarm runs never has, and cost ~26 CPU-s at
# each start on 2 cores, beside a running sweep.
SERVER_ENV_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_env() -> dict[str, str]:
    """The variables an MLflow server Rewarm starts gets: SERVER_ENV_DEFAULTS, the user's values winning."""
    return {k: os.environ.get(k, v) for k, v in SERVER_ENV_DEFAULTS.items()}


def default_tracking_uri(explicit: str | None = None) -> str:
    """`explicit`, else MLFLOW_TRACKING_URI, else an absolute SQLite file in the working directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store, as an absolute file URI (workers change directory)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking.uri: MLflow server at {uri} answered HTTP {resp.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking.uri: MLflow server at {uri} is unreachable ({reason}); "
                            "start it or set MLFLOW_TRACKING_URI") from None


def open_client(uri: str):
    """A client for an existing store only: reading a sweep must never create or change a store."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            raise TrackingError(f"no MLflow store at {db} (set --tracking-uri or MLFLOW_TRACKING_URI)")
    check_reachable(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def is_outage(exc: BaseException) -> bool:
    """Whether a failed tracking call is the store being unavailable (ride it out and retry),
    rather than a request the store refused or a bug (let it raise).

    Outages: the server unreachable, timing out or answering 5xx / 429 (the MLflow client turns
    all of these into MlflowException with an HTTP status of 500 and up, or 429), the health
    probe failing (TrackingError), a connection or name-resolution error, or a SQL store that
    is locked or gone. A file-system error (an unwritable artifact dir) is not an outage.
    """
    if isinstance(exc, (TrackingError, ConnectionError, TimeoutError, socket.gaierror, socket.herror)):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, (RequestsConnectionError, Timeout, OperationalError))
