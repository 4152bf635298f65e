"""Connecting to Ray: a local cluster for the embedded default, RAY_ADDRESS for a real one."""

from __future__ import annotations

import json
import logging
import os
import socket

# Settings Rewarm runs with unless the user set them. Each is applied to this process at import
# (os.environ.setdefault) and, on an existing cluster, sent to every task and actor of the sweep
# through the job's runtime_env: on a cluster, Train controllers and workers run in processes
# that never saw this driver's environment.
RAY_ENV_DEFAULTS = {
    # Ray Train V2 polls workers at this interval and a worker's report blocks until polled;
    # the 2 s default caps every trial at one report per 2 s (DESIGN.md, measured).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    # Train V2 is the default in Ray 2.60; say so explicitly so an older default cannot flip it.
    "RAY_TRAIN_V2_ENABLED": "1",
    # Save Tune's experiment state (trials, searcher) at every controller step instead of every
    # >= 10 s: a driver killed between two saves would otherwise restart recent trials under new
    # ids on `rewarm resume`. The state of a sweep of tens of trials is small (and tune_state.py
    # keeps the saves from racing their uploads).
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    # A tracking-server outage must not stall the sweep driver for minutes per call: fail fast
    # and let the driver retry later (it keeps curves on disk until they are logged).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # Rewarm prints its own progress lines; Tune's console reporter would repeat them as tables.
    "RAY_AIR_NEW_OUTPUT": "0",
}
for _key, _value in RAY_ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

# Set by Ray in the entrypoint of a `ray job submit`: the job's own runtime_env.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def cluster_env_vars() -> dict[str, str]:
    """The settings above, as this process has them, for the sweep's job on a cluster.

    Keys that a submitted job's runtime_env already sets are left to it: Ray refuses to merge
    two runtime_envs that set the same variable, and the job's value is what this process
    already has.
    """
    job_env = {}
    if _JOB_CONFIG_ENV in os.environ:
        job_env = (json.loads(os.environ[_JOB_CONFIG_ENV]).get("runtime_env") or {}).get("env_vars") or {}
    return {key: os.environ[key] for key in RAY_ENV_DEFAULTS if key not in job_env}


def init_ray(address: str | None = None, quiet: bool = True, trial_slots: int = 64) -> dict:
    """Start or join Ray. Returns the cluster's resources.

    `address` (or RAY_ADDRESS) joins an existing cluster; otherwise a local one starts
    with the dashboard bound to 127.0.0.1 only and `trial_slots` units of the custom
    resource that sweep trial drivers use.
    """
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=not quiet)
    if address:
        ray.init(address=address, runtime_env={"env_vars": cluster_env_vars()}, **kwargs)
    else:
        # Trial drivers ask for this custom resource instead of a CPU (DESIGN.md).
        # address="local": always a new private cluster, even where a Ray node already runs on
        # this machine (joining one is what --address / RAY_ADDRESS are for). Its processes
        # inherit this process's environment, settings above included.
        dashboard_port = _free_local_port()
        # Ray Train's placement-group cleaner asks the State API whether its controller is
        # alive, with no address; where a second Ray instance runs on the machine, that lookup
        # fails ("Found multiple active Ray instances"), the placement groups of stopped trials
        # are never freed and later trials wait forever. Naming this cluster's API server
        # (its dashboard) in the environment the cluster's processes inherit removes the guess.
        # Only the cluster's processes get it (they are started inside ray.init and inherit the
        # environment then): Ray's clients prefer it to any address they are given, so in this
        # process it would outlive the cluster and misdirect a later `ray job submit`.
        # include_dashboard=True: were the port taken meanwhile, ray.init fails loudly instead
        # of starting without the API server that the variable names.
        previous = os.environ.get("RAY_API_SERVER_ADDRESS")
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
        try:
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=dashboard_port, resources={"rewarm_trial_slot": trial_slots}, **kwargs)
        finally:
            if previous is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = previous
    return ray.cluster_resources()


def _free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
