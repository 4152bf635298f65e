"""Process settings Rewarm runs with, applied by one explicit call (never at import).

`apply_process_settings()` is called first thing by the CLI (`sweeps/cli.py: main`) and by
the library entry points (`run_sweep`, `run_single`), so every command gets them, `rewarm
best` included (its MLflow timeouts). A value the user set in the environment wins. On an
existing Ray cluster, `cluster_env_vars()` sends them to every task and actor of the sweep
through the job's runtime_env: Train controllers and workers run in processes that never
saw this driver's environment.
"""

from __future__ import annotations

import os

from trainers import ray_compat

PROCESS_SETTINGS = {
    # Ray Train V2 polls workers at this interval and a worker's report blocks until polled;
    # the 2 s default caps every trial at one report per 2 s (docs/ARCHITECTURE.md, measured).
    ray_compat.TRAIN_HEALTH_CHECK_INTERVAL_ENV: "0.1",
    # Train V2 is the default in Ray 2.60; say so explicitly so an older default cannot flip it.
    ray_compat.TRAIN_V2_ENABLED_ENV: "1",
    # Save Tune's experiment state (trials, searcher) at every controller step instead of every
    # >= 10 s: a driver killed between two saves would otherwise restart recent trials under new
    # ids on `rewarm resume`. The state of a sweep of tens of trials is small (and
    # ray_compat.serialize_state_uploads keeps the saves from racing their uploads).
    ray_compat.TUNE_STATE_SAVE_PERIOD_ENV: "0",
    # A tracking-server outage must not stall the sweep driver for minutes per call: fail fast
    # and let the driver retry later (it keeps curves on disk until they are logged).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # Uploading a checkpoint artifact must not draw a progress bar into the sweep's output.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Against a tracking server, MLflow prints "View run ... at: <url>" and "View experiment"
    # for every run it closes (each trial's, the sweep's), after one more request to read
    # the run back; the sweep prints its own lines, with the server and parent run once.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Rewarm prints its own progress lines; Tune's console reporter would repeat them as tables.
    ray_compat.TUNE_NEW_OUTPUT_ENV: "0",
    # MLflow and the run dirs are a sweep's record; Tune's own CSV and TensorBoard files of
    # every result would be more copies nobody reads, written by the driver at each report,
    # and importing tensorboardX alone took 1.7 s of every sweep's start on 2 cores. The sweep
    # adds Tune's JSON log back itself, which Tune reads (sweeps/execution/driver.py).
    ray_compat.TUNE_AUTO_LOGGERS_OFF_ENV: "1",
    # MLflow's INFO lines (database tables created, experiment created) are not the user's
    # business; `rewarm -v` (or MLFLOW_LOGGING_LEVEL=INFO) shows them. Read at `import mlflow`.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
# `rewarm -v` sets it: library notices (Ray's, MLflow's) reach the terminal (sweeps/execution/cluster.py).
VERBOSE_ENV = "REWARM_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_optuna_verbosity() -> None:
    """Optuna's own log lines (a study created, each trial finished) as `rewarm -v` asks: INFO
    with -v, else warnings only. Optuna reads no environment variable for this, so each
    place that is about to use Optuna calls this (its searcher, knob importance)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose() else optuna.logging.WARNING)


def apply_process_settings() -> None:
    """Set every setting this process does not have yet (idempotent)."""
    for key, value in PROCESS_SETTINGS.items():
        os.environ.setdefault(key, value)


def cluster_env_vars() -> dict[str, str]:
    """The settings, as this process has them (else their defaults), for the sweep's job on a cluster.

    Keys that a submitted job's runtime_env already sets are left to it: Ray refuses to merge
    two runtime_envs that set the same variable, and the job's value is what this process
    already has.
    """
    job_env = ray_compat.submitted_job_env_vars()
    return {key: os.environ.get(key, value) for key, value in PROCESS_SETTINGS.items() if key not in job_env}
