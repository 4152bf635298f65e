"""The sweep's Optuna study, kept in the sweep's store so Optuna's own tools can read it.

One study per sweep, named after it. Ray Tune's searcher writes it as the sweep runs (the
parameters Optuna suggested, intermediate values against tokens, each trial's final state
and Rewarm's view of it as user attributes: sweeps/execution/search.py); `optuna.load_study`,
optuna-dashboard and `rewarm importance` read it.

Where it lives, in one rule (`study_storage_url`):
    tracking.study_storage (an SQLAlchemy URL)   if the spec names one, else
    sqlite:///<dir>/optuna.db                    beside an SQLite MLflow store (<dir>/mlflow.db), else
    the same PostgreSQL database                 when MLflow's store is PostgreSQL, else
    sqlite:///<storage_path>/optuna.db           (an HTTP tracking server: Rewarm cannot see its database)
On PostgreSQL the study's tables go to their own schema (STUDY_SCHEMA): Optuna and MLflow
both keep an `alembic_version` table, and one database holding both breaks both.
"""

from __future__ import annotations

from pathlib import Path

from sweeps.tracking.store import TrackingError

STUDY_DB_FILE = "optuna.db"
STUDY_SCHEMA = "optuna"  # PostgreSQL schema of the study tables
# Optuna user attributes of each trial (set when Tune ends it; search.py).
TUNE_TRIAL_ATTR = "tune_trial_id"
STATUS_ATTR = "rewarm_status"  # a TrialStatus: a trial stopped early reaches Optuna as COMPLETE, this says so
# Study attribute: numbers of trials suggested just before a sweep driver stopped, never run
# (failed on `rewarm resume`).
LOST_TRIALS_ATTR = "rewarm_lost_trials"


def study_storage_url(tracking_uri: str, explicit: str | None, storage_dir: str) -> str:
    """The study's SQLAlchemy URL (the module docstring's rule)."""
    if explicit:
        return explicit
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / STUDY_DB_FILE}"
    if tracking_uri.startswith("postgresql"):
        return tracking_uri
    return f"sqlite:///{Path(storage_dir) / STUDY_DB_FILE}"


def open_study_storage(url: str):
    """An Optuna RDBStorage on `url` (tables created on first use); a one-line TrackingError
    naming the URL when it cannot be opened."""
    import optuna

    engine_kwargs = {}
    if url.startswith("postgresql"):
        _ensure_schema(url)
        engine_kwargs = {"connect_args": {"options": f"-csearch_path={STUDY_SCHEMA}"}}
    try:
        if url.startswith("sqlite:///"):  # SQLite makes the file, not its directory
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:  # driver, network and permission errors vary by backend
        raise TrackingError(f"cannot open the Optuna study storage {display_url(url)} "
                            f"({type(exc).__name__}: {_first_line(exc)}); set tracking.study_storage to a "
                            f"database this process can write") from None


def load_sweep_study(url: str, sweep: str):
    """The sweep's study, for reading; a one-line TrackingError when it is not there."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise TrackingError(f"no Optuna study {sweep!r}: {display_url(url)} does not exist (sweeps started "
                            f"before Rewarm kept their study have none)")
    storage = open_study_storage(url)
    try:
        return optuna.load_study(study_name=sweep, storage=storage)
    except KeyError:
        raise TrackingError(f"no Optuna study {sweep!r} in {display_url(url)} (sweeps started before Rewarm "
                            f"kept their study have none)") from None


def display_url(url: str) -> str:
    """`url` without its password, for messages and tags."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: say it as given
        return url


def _ensure_schema(url: str) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {STUDY_SCHEMA}"))
        engine.dispose()
    except Exception as exc:
        raise TrackingError(f"cannot create schema {STUDY_SCHEMA!r} for the Optuna study in {display_url(url)} "
                            f"({type(exc).__name__}: {_first_line(exc)}); create it, or set "
                            f"tracking.study_storage to a database this process can write") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
