"""MLflow, owned by Rewarm: where a sweep's records live and how they are written and read.

Owns: the store (URI defaults, reachability, which errors are an outage), the tags and
statuses recorded on runs, the `Tracker` that writes a sweep's parent and trial runs, the
outage-tolerant sync of a trial's run dir into MLflow, and reading trial records back.
May import: `trainers` (report-point and run-dir vocabulary), `search_spaces`, `sweeps.settings`.
Never imports Ray: `rewarm best` / `analyze` / `report` work from MLflow alone.
"""
