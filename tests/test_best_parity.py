"""MLflow's own query finds the winner `rewarm best` finds, for every objective kind.

Trial runs are written by Rewarm's Tracker into a real SQLite store from a literal table of
final losses (a tabular benchmark: no training). The table makes the kinds disagree: the
trial that wins the joint objective forgets too much for the constrained one, and a trial
stopped early has the highest (truncated) objective of all, which neither may rank first.
"""

import json

import mlflow
import pytest

from sweeps.cli import main
from sweeps.tracking.statuses import TrialStatus
from sweeps.tracking.tracker import Tracker
from tests.conftest import global_tracking_uri
from trainers.objective import BaseReference, ObjectiveConfig, score
from trainers.report_point import DIVERGED_OBJECTIVE

BASE = BaseReference(L_up=2.0, L_down=5.0)
# trial id, status, L_up, L_down, tokens
TABLE = [
    ("bold", TrialStatus.COMPLETED, 2.50, 3.40, 4096),  # gain 1.6, forgetting 0.5
    ("careful", TrialStatus.COMPLETED, 2.10, 3.90, 4096),  # gain 1.1, forgetting 0.1
    ("timid", TrialStatus.COMPLETED, 2.00, 4.60, 4096),  # gain 0.4, no forgetting
    ("cut_short", TrialStatus.EARLY_STOPPED, 2.00, 3.00, 1024),  # 2.0 at a quarter of the budget
    ("blew_up", TrialStatus.DIVERGED, None, None, 512),
]
KINDS = {
    "joint": ObjectiveConfig(kind="joint"),
    "constrained": ObjectiveConfig(kind="constrained", max_forgetting=0.3),
    "pareto": ObjectiveConfig(kind="pareto", forgetting_weight=2.0),
}
EXPECTED = {"joint": "bold", "constrained": "careful", "pareto": "careful"}


def _final(status, L_up, L_down, tokens, cfg) -> dict:
    if status == TrialStatus.DIVERGED:
        return {"objective": DIVERGED_OBJECTIVE, "tokens": tokens, "step": tokens // 512}
    return {**score(L_up, L_down, BASE, cfg), "tokens": tokens, "step": tokens // 512}


@pytest.mark.parametrize("kind", list(KINDS))
def test_mlflow_search_runs_ranks_like_rewarm_best(tmp_path, kind, capsys, monkeypatch):
    cfg = KINDS[kind]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "parity", f"sweep-{kind}")
    parent = tracker.start_parent("{}", {}, BASE.model_dump(), {}, resume=False)
    for trial_id, status, L_up, L_down, tokens in TABLE:
        run_id, _ = tracker.child_for_trial(trial_id, {"max_lr": 1e-3}, {})
        tracker.finish_child(run_id, status, _final(status, L_up, L_down, tokens, cfg), artifacts={})

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["best", "--sweep", f"sweep-{kind}", "--tracking-uri", uri, "--format", "json", "--top", "10"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["trial_id"] == EXPECTED[kind]

    # The query README ("Querying in MLflow") gives, with MLflow's own client.
    with global_tracking_uri(uri):
        found = mlflow.search_runs(
            experiment_ids=[tracker.ensure_experiment()],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`rewarm.status` = 'completed'",
            order_by=["metrics.`final/objective` DESC"], max_results=1)
    assert found["tags.rewarm.trial_id"].tolist() == [rows[0]["trial_id"]]


def test_the_table_makes_the_kinds_disagree():
    """Without this, the parity above would hold for any query that picks the top objective."""
    by_kind = {kind: {t[0]: _final(t[1], t[2], t[3], t[4], cfg)["objective"] for t in TABLE}
               for kind, cfg in KINDS.items()}
    assert max(by_kind["joint"], key=by_kind["joint"].get) == "cut_short"  # truncated, must not win
    assert by_kind["constrained"]["bold"] < by_kind["constrained"]["timid"]  # infeasible below feasible
    assert len(set(EXPECTED.values())) == 2  # the kinds pick different winners
