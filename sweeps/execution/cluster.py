"""Connecting to Ray: a local cluster for the embedded default, RAY_ADDRESS for a real one."""

from __future__ import annotations

import logging
import os
import socket

from sweeps.settings import apply_process_settings, cluster_env_vars, verbose
from trainers import ray_compat

TRIAL_SLOT = "rewarm_trial_slot"  # custom resource a Ray Train trial's driver holds instead of a CPU
# Raylet notices kept out of the terminal (ray_compat.drop_driver_notices): trial processes
# starting on a small machine exceed the raylet's "expected startup concurrency", harmlessly.
RAYLET_NOTICES = ("worker processes have been started on node",)


def init_ray(address: str | None = None, quiet: bool = True, trial_slots: int = 64) -> dict:
    """Start or join Ray. Returns the cluster's resources.

    `address` (or RAY_ADDRESS) joins an existing cluster; otherwise a local one starts
    with the dashboard bound to 127.0.0.1 only and `trial_slots` units of the custom
    resource that sweep trial drivers use.
    """
    import ray

    apply_process_settings()  # before Ray starts: its processes inherit this environment
    if ray.is_initialized():
        return ray.cluster_resources()
    quiet = quiet and not verbose()
    if quiet:  # notices, not problems; `rewarm -v` shows them
        logging.getLogger(ray_compat.TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)
        ray_compat.drop_driver_notices(RAYLET_NOTICES)
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=not quiet)
    if address:
        ray.init(address=address, runtime_env={"env_vars": cluster_env_vars()}, **kwargs)
    else:
        # Trial drivers ask for this custom resource instead of a CPU (docs/ARCHITECTURE.md).
        # address="local": always a new private cluster, even where a Ray node already runs on
        # this machine (joining one is what --address / RAY_ADDRESS are for). Its processes
        # inherit this process's environment, process settings included (sweeps/settings.py).
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
        # Nothing preempts the nodes of a cluster on this machine: Train's preemption watcher
        # would be one more process per worker-group start (~1.5 s of CPU on 2 cores) with
        # nothing to watch. Clusters joined by address keep their own setting.
        os.environ.setdefault(ray_compat.TRAIN_PREEMPTION_WATCHER_ENV, "0")
        previous = os.environ.get(ray_compat.API_SERVER_ADDRESS_ENV)
        os.environ[ray_compat.API_SERVER_ADDRESS_ENV] = f"http://127.0.0.1:{dashboard_port}"
        try:
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=dashboard_port, resources={TRIAL_SLOT: trial_slots}, **kwargs)
        finally:
            if previous is None:
                os.environ.pop(ray_compat.API_SERVER_ADDRESS_ENV, None)
            else:
                os.environ[ray_compat.API_SERVER_ADDRESS_ENV] = previous
    return ray.cluster_resources()


def _free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
