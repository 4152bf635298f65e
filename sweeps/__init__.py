"""Sweeps: from a spec to ranked configs, in layers that import only downwards.

    settings   process settings, applied by one explicit call at start
    decisions  pure rules (when to stop a trial); no Ray, no I/O
    tracking   MLflow: store, statuses, runs and tags, outage-tolerant sync, reading back
    config     the spec, sizes derived from it, the sweep dir layout, resolution to TrialConfigs
    results    rewarm best / analyze / report, from MLflow alone
    execution  everything on Ray: trial function, searcher, schedulers, callback, drivers
    cli        the `rewarm` command

Below them: `trainers` (the training loop and its vocabulary) and `search_spaces` (knobs and
spaces). tests/test_architecture.py enforces the order; docs/ARCHITECTURE.md explains it.
"""
