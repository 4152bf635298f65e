"""Every use of MLflow beyond its public client API, in one place (MLflow 3.17).

Canaries: tests/test_mlflow_compat.py, against a real SQLite store.
"""

from __future__ import annotations

from collections import defaultdict

_BULK_CHUNK = 500  # run ids per query (SQLite's bound-parameter limit is far above)


def metric_histories(client, run_ids: list[str], key: str) -> dict[str, list]:
    """run id -> the metric's history (MLflow Metric entities), for many runs at once.

    MLflow's client reads one run's history per call (~5-10 ms each on SQLite, a round trip on
    a server): a report over 1,000 trials and 5 curves would make 5,000 calls. Its SQL store
    has a bulk query (`SqlAlchemyStore.get_metric_history_bulk`, used by its UI's charts) that
    the client does not expose; where the store has it, one query per 500 runs. Other stores
    (an HTTP server) are read run by run through the public client.
    """
    store = _store(client)
    bulk = getattr(store, "get_metric_history_bulk", None)
    out: dict[str, list] = defaultdict(list)
    if bulk is None:
        return {run_id: client.get_metric_history(run_id, key) for run_id in run_ids}
    for i in range(0, len(run_ids), _BULK_CHUNK):
        for row in bulk(run_ids[i:i + _BULK_CHUNK], key, max_results=None):
            out[row.run_id].append(row)  # a Metric, with its run_id
    return {run_id: out.get(run_id, []) for run_id in run_ids}


def _store(client):
    try:
        return client._tracking_client.store
    except AttributeError:  # the private path moved: the public per-run reads still work
        return None
