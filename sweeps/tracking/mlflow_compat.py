"""Every use of MLflow beyond its public client API, in one place (MLflow 3.17).

Canaries: tests/test_mlflow_compat.py, against a real SQLite store.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

_BULK_CHUNK = 500  # run ids per query (SQLite's bound-parameter limit is far above)


class Point(NamedTuple):
    """One logged value of a metric (what the read side uses of MLflow's Metric)."""

    step: int
    value: float
    timestamp: int


def metric_histories(client, run_ids: list[str], key: str) -> dict[str, list[Point]]:
    """run id -> the metric's history, ordered by time, for many runs at once.

    MLflow's client reads one run's history per call (~5-10 ms each on SQLite, a round trip on
    a server): a report over 1,000 trials and 5 curves would make 5,000 calls. On an SQL store
    this reads the store's metrics table directly, one query per 500 runs, as plain rows (the
    store's own bulk query builds an ORM object per row: ~12 s for a 1,000-trial sweep's
    curves). Other stores (an HTTP server) are read run by run through the public client.
    """
    store = _store(client)
    if not hasattr(store, "ManagedSessionMaker"):
        return {run_id: [Point(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]
                for run_id in run_ids}
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    out: dict[str, list[Point]] = defaultdict(list)
    with store.ManagedSessionMaker() as session:
        for i in range(0, len(run_ids), _BULK_CHUNK):
            rows = (session.query(SqlMetric.run_uuid, SqlMetric.step, SqlMetric.value, SqlMetric.timestamp)
                    .filter(SqlMetric.key == key, SqlMetric.run_uuid.in_(run_ids[i:i + _BULK_CHUNK]))
                    .order_by(SqlMetric.run_uuid, SqlMetric.timestamp, SqlMetric.step, SqlMetric.value))
            for run_id, step, value, timestamp in rows:
                out[run_id].append(Point(int(step), float(value), int(timestamp)))
    return {run_id: out.get(run_id, []) for run_id in run_ids}


def _store(client):
    try:
        return client._tracking_client.store
    except AttributeError:  # the private path moved: the public per-run reads still work
        return None
