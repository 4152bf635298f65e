"""Canaries for sweeps/tracking/mlflow_compat.py: MLflow internals Rewarm reads, on a real store."""

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from sweeps.tracking import mlflow_compat


def test_bulk_histories_equal_the_clients_own_reads(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("c")
    runs = [client.create_run(experiment).info.run_id for _ in range(3)]
    for i, run_id in enumerate(runs[:2]):
        client.log_batch(run_id, metrics=[Metric("eval/L_down", 5.0 - s * 0.1 - i, 1000 + s, s) for s in range(4)])
    assert hasattr(mlflow_compat._store(client), "ManagedSessionMaker")  # the fast path: the SQL store's session
    bulk = mlflow_compat.metric_histories(client, runs, "eval/L_down")
    for run_id in runs:
        one = client.get_metric_history(run_id, "eval/L_down")
        assert [(m.step, m.value, m.timestamp) for m in bulk[run_id]] == \
               sorted((m.step, m.value, m.timestamp) for m in one)
    assert bulk[runs[2]] == []
