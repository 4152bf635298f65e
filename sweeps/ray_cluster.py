"""Connecting to Ray: a local cluster for the embedded default, RAY_ADDRESS for a real one."""

from __future__ import annotations

import logging
import os

# Ray Train V2 polls workers at this interval and a worker's report blocks until polled;
# the 2 s default caps every trial at one report per 2 s (DESIGN.md, measured).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
# Train V2 is the default in Ray 2.60; say so explicitly so an older default cannot flip it.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Save Tune's experiment state (trials, searcher) at every controller step instead of every
# >= 10 s: a driver killed between two saves would otherwise restart recent trials under new
# ids on `rewarm resume`. The state of a sweep of tens of trials is small.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
# A tracking-server outage must not stall the sweep driver for minutes per call: fail fast
# and let the driver retry later (it keeps curves on disk until they are logged).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# Rewarm prints its own progress lines; Tune's console reporter would repeat them as tables.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


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
        ray.init(address=address, **kwargs)
    else:
        # Trial drivers ask for this custom resource instead of a CPU (DESIGN.md).
        # address="local": always a new private cluster, even where a Ray node already runs on
        # this machine (joining one is what --address / RAY_ADDRESS are for).
        ray.init(address="local", dashboard_host="127.0.0.1", resources={"rewarm_trial_slot": trial_slots}, **kwargs)
    return ray.cluster_resources()
