"""A real small sweep: local Ray, Tune + Optuna + the schedule-aware stopper, Train workers, a real SQLite MLflow store;
then `rewarm best` reads it back with no Ray, and `--export` reruns the winner exactly."""

import json
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from sweeps.config.loading import load_spec
from sweeps.execution.single_run import run_single
from sweeps.execution.driver import run_sweep
from tests.conftest import assert_divergence_recorded, global_tracking_uri, small_spec, seed_mlflow_store

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TERMINAL = {"completed", "early_stopped", "diverged", "failed"}


@pytest.fixture(scope="module")
def sweep(local_ray, toy_world, tmp_path_factory, empty_mlflow_store):
    tmp = tmp_path_factory.mktemp("sweep")
    seed_mlflow_store(tmp, empty_mlflow_store)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = small_spec(
        tmp, name="e2e",
        search_space={"name": "default", "params": {}},
        budget={"num_trials": 4, "max_concurrent": 2, "tokens_per_trial": 512 * 24},
        scheduler={"kind": "rewarm", "reduction_factor": 2},
        tracking={"uri": uri, "experiment": "e2e"},
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    outcome = run_sweep(spec)
    return spec, uri, outcome, tmp


def test_parent_and_child_runs_are_complete(sweep):
    spec, uri, outcome, _ = sweep
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["rewarm.status"] == "completed"
    assert {"spec.yaml", "sweep.json", "summary.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "base/L_up" in parent.data.metrics and parent.data.params["training.global_batch_size"] == "8"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == spec.budget.num_trials == len(outcome.trials)
    assert len({c.data.tags["rewarm.trial_id"] for c in children}) == len(children)  # no duplicates
    for child in children:
        assert child.info.status != "RUNNING"
        assert child.data.tags["rewarm.status"] in TERMINAL
        assert {"knob.max_lr", "knob.warmup_frac", "knob.replay_ratio", "knob.schedule"} <= set(child.data.params)
        steps_trained = int(child.data.metrics["final/step"])
        loss = client.get_metric_history(child.info.run_id, "train/loss")
        logged = sorted(m.step for m in loss)
        # Every step once. A trial stopped by the scheduler may finish a few steps before its
        # workers are torn down; those were trained, so they are logged too.
        assert logged == list(range(1, len(logged) + 1)) and len(logged) >= steps_trained
        for key in ("train/lr", "train/grad_norm", "train/tokens", "eval/L_up", "eval/L_down", "eval/gain",
                    "eval/forgetting", "eval/objective", "system/cpu_utilization_percentage",
                    "system/system_memory_usage_megabytes"):
            assert client.get_metric_history(child.info.run_id, key), key
        if child.data.tags["rewarm.status"] == "completed":
            assert steps_trained == spec.steps_per_trial
            assert "rewarm.best_checkpoint" in child.data.tags
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
            assert {"checkpoints/final", "checkpoints/best"} <= artifacts


def test_asha_stopped_some_trial_by_tokens(sweep):
    spec, _, outcome, _ = sweep
    statuses = [t["status"] for t in outcome.trials]
    assert "completed" in statuses
    stopped = [t for t in outcome.trials if t["status"] == "early_stopped"]
    for t in stopped:
        assert t["metrics"]["tokens"] < spec.budget.tokens_per_trial


def test_best_reads_mlflow_alone_and_export_reruns_exactly(sweep, rewarm_bin):
    spec, uri, outcome, tmp = sweep
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([rewarm_bin, "best", "--sweep", "e2e", "--format", "json", "--tracking-uri", uri,
                           "--top", "10", "--export", str(tmp / "best.yaml")],
                          capture_output=True, text=True, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    expected = outcome.best()
    assert rows[0]["trial_id"] == expected["trial_id"] and rows[0]["status"] == "completed"
    assert rows[0]["objective"] == pytest.approx(expected["metrics"]["objective"])
    assert [r["objective"] for r in rows if r["status"] == "completed"] == \
        sorted((r["objective"] for r in rows if r["status"] == "completed"), reverse=True)

    exported = load_spec(tmp / "best.yaml")
    assert exported.fixed_knobs() == {k: rows[0][k] for k in ("warmup_frac", "max_lr", "replay_ratio", "schedule")}
    rerun = run_single(exported, run_name="rerun")
    assert rerun.status == "completed"
    assert rerun.metrics["objective"] == pytest.approx(rows[0]["objective"], abs=1e-9)


def _best(capsys, *args) -> tuple[int, str, str]:
    """`rewarm best` in this process (the subprocess test above shows it needs no Ray)."""
    from sweeps.cli import main

    capsys.readouterr()
    code = main(["best", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_best_filters(sweep, capsys, monkeypatch):
    _, uri, outcome, tmp = sweep
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lowest = min(t["metrics"]["forgetting"] for t in outcome.trials if "forgetting" in t["metrics"])
    _, out, _ = _best(capsys, "--sweep", "e2e", "--format", "json", "--tracking-uri", uri,
                      "--max-forgetting", str(lowest))
    rows = json.loads(out)
    assert rows and all(r["forgetting"] <= lowest for r in rows)
    _, out, _ = _best(capsys, "--sweep", "e2e", "--format", "json", "--tracking-uri", uri, "--pareto")
    front = json.loads(out)
    for a in front:
        assert not any(b["gain"] > a["gain"] and b["forgetting"] < a["forgetting"] for b in front)
    code, _, err = _best(capsys, "--sweep", "nope", "--tracking-uri", uri)
    assert code == 2 and err.strip() == "rewarm: error: sweep 'nope' not found in the tracking store"


def test_diverging_trial_is_marked_never_ranked_and_the_sweep_goes_on(local_ray, toy_world, tmp_path):
    """In-process trials; Ray Train trials diverge in tests/test_second_ray_instance.py (the
    same sweep, checked the same way, where each trial needs every CPU)."""
    spec = small_spec(
        tmp_path, name="blowup",
        search_space={"name": "default", "params": {"max_lr": [3e-3, 60.0], "warmup_frac": 0.0,
                                                      "replay_ratio": 0.05, "schedule": "cosine"}},
        # The seeded sampler proposes 60, 3e-3, 60, 60: both LRs within the first two trials.
        budget={"num_trials": 4, "max_concurrent": 1, "tokens_per_trial": 512 * 24},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1},
        scheduler={"kind": "none"}, tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "blowup"},
    )
    outcome = run_sweep(spec)
    by_lr = {}
    for t in outcome.trials:
        by_lr.setdefault(t["knobs"]["max_lr"], set()).add(t["status"])
    assert set(by_lr) == {3e-3, 60.0}, "precondition: the seeded sampler proposes both learning rates"
    assert by_lr[60.0] == {"diverged"} and by_lr[3e-3] == {"completed"}  # the sweep went on after divergence
    assert_divergence_recorded(spec, "blowup")


def test_every_stopper_decision_is_logged_to_the_trial_run(sweep, tmp_path):
    spec, uri, outcome, _ = sweep
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    for child in children:
        local = client.download_artifacts(child.info.run_id, "decisions.jsonl", str(tmp_path / child.info.run_id))
        rows = [json.loads(line) for line in open(local).read().splitlines()]
        eval_steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "eval/objective"))
        stopped = child.data.tags["rewarm.status"] == "early_stopped"
        # One decision per eval point, in order, until the stop. A stopped trial's workers may
        # report one more eval before they are torn down: it is logged, but Tune asks no decision.
        assert [r["tokens"] for r in rows] == [s * spec.tokens_per_step for s in eval_steps[:len(rows)]]
        assert all(r["reason"] for r in rows) and (len(rows) == len(eval_steps) or stopped)
        assert (rows[-1]["action"] == "stop") == stopped
        assert child.data.tags["rewarm.stopper.decisions"] == str(len(rows))
        stop_rows = [r for r in rows if r["action"] == "stop"]
        verdict = stop_rows[-1] if stop_rows else rows[-1]
        assert child.data.tags["rewarm.stopper.reason"] == f"at {verdict['tokens']} tokens: {verdict['reason']}"


def test_optuna_study_holds_every_trial_and_the_dashboard_serves_it(sweep):
    """The study in the sweep's store: one Optuna trial per Tune trial, its knobs as MLflow has
    them, intermediate values against tokens, Rewarm's status; then the real optuna-dashboard
    server reads it back over HTTP."""
    import shutil
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import optuna

    from sweeps.tracking.study import STATUS_ATTR, TUNE_TRIAL_ATTR
    from tests.conftest import require
    from tests.mlflow_server import free_port

    spec, uri, outcome, tmp = sweep
    url = spec.anchored().study_storage_url()
    assert url == f"sqlite:///{tmp / 'optuna.db'}"  # beside the SQLite MLflow store
    study = optuna.load_study(study_name=spec.name, storage=url)
    by_tune_id = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.trials}
    assert len(study.trials) == len(by_tune_id) == spec.budget.num_trials
    eval_tokens = spec.cadence().eval_every * spec.tokens_per_step
    for summary in outcome.trials:
        trial = by_tune_id[summary["trial_id"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.user_attrs[STATUS_ATTR] == summary["status"]
        assert {k: pytest.approx(v) for k, v in trial.params.items()} == \
               {k: pytest.approx(summary["knobs"][k]) for k in trial.params}
        assert trial.intermediate_values and all(t % eval_tokens == 0 for t in trial.intermediate_values)
        assert max(trial.intermediate_values) == summary["metrics"]["tokens"]

    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    require(dashboard.exists() or shutil.which("optuna-dashboard") is not None, "optuna-dashboard")
    port = free_port()
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.time() + 60
        while True:
            try:
                studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=2))
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read()[-2000:] if server.poll() is not None else "dashboard did not answer in 60 s"
                time.sleep(0.5)
        (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == spec.name]
        served = json.load(urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=10))
        assert len(served["trials"]) == spec.budget.num_trials
        first = min(served["trials"], key=lambda t: t["number"])
        assert {p["name"] for p in first["params"]} == set(study.trials[0].params)
        assert [v["step"] for v in first["intermediate_values"]] == sorted(study.trials[0].intermediate_values)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_parent_names_the_best_trial_and_its_registered_model_loads_by_alias(sweep, capsys, monkeypatch):
    """The winner is on the parent run's tags; `rewarm best --register` puts its best weights in
    the Model Registry, and `models:/NAME@best` loads into a transformers model whose losses
    are the trial's own at its best eval."""
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM

    from sweeps.config.resolve import resolve
    from trainers.data import load_blocks
    from trainers.evaluation import validation_loss

    spec, uri, outcome, tmp = sweep
    client = MlflowClient(uri)
    best = outcome.best()
    tags = client.get_run(outcome.parent_run_id).data.tags
    assert tags["rewarm.best_trial_id"] == best["trial_id"] and tags["rewarm.best_run_id"] == best["run_id"]
    assert json.loads(tags["rewarm.best_config"]) == best["knobs"]
    assert float(tags["rewarm.best_objective"]) == pytest.approx(best["metrics"]["objective"])

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _best(capsys, "--sweep", "e2e", "--tracking-uri", uri, "--register", "e2e-best")
    assert code == 0 and "models:/e2e-best@best" in err, err
    assert client.get_model_version_by_alias("e2e-best", "best").run_id == best["run_id"]
    with global_tracking_uri(uri):  # models:/ URIs resolve through the global registry URI
        path = mlflow.artifacts.download_artifacts("models:/e2e-best@best", dst_path=str(tmp / "registered"))
    model = AutoModelForCausalLM.from_pretrained(path).eval()

    objective = client.get_metric_history(best["run_id"], "eval/objective")
    best_step = max(objective, key=lambda m: m.value).step
    resolved = resolve(spec)
    for side, domain in (("L_up", resolved.upstream), ("L_down", resolved.downstream)):
        logged = {m.step: m.value for m in client.get_metric_history(best["run_id"], f"eval/{side}")}[best_step]
        measured = validation_loss(model, load_blocks(domain.val), spec.training.eval_batch_size, torch.device("cpu"))
        assert measured == pytest.approx(logged, abs=1e-5), side


def test_retention_reclaimed_stopped_trials_and_kept_the_best(sweep):
    """The default retention policy ran as trials ended: trials stopped early lost their
    checkpoints (MLflow's links rewritten first), completed ones kept their final checkpoint
    and best model, and the parent run says what the sweep holds. The winner's model still
    loads (test above: registered by alias and loaded)."""
    from sweeps.tracking.retention import RECLAIMED_PREFIX, dir_bytes
    from trainers.run_dir import list_checkpoints

    spec, uri, outcome, tmp = sweep
    trials_root = tmp / "runs" / "e2e" / "trials"
    client = MlflowClient(uri)
    stopped = [t for t in outcome.trials if t["status"] in ("early_stopped", "diverged")]
    assert stopped, "the sweep stopped no trial, so it cannot show reclaiming"
    for t in outcome.trials:
        directory, tags = trials_root / t["trial_id"], client.get_run(t["run_id"]).data.tags
        checkpoints = list_checkpoints(directory)
        if t["status"] == "completed":
            assert len(checkpoints) == 1 and (directory / "best_model").exists()
            assert tags["rewarm.final_checkpoint"] == str(checkpoints[0])
        elif t in stopped:
            assert not checkpoints and not (directory / "best_model").exists()
            for kind in ("final", "best"):
                assert tags.get(f"rewarm.{kind}_checkpoint", RECLAIMED_PREFIX).startswith(RECLAIMED_PREFIX)
    held = client.get_metric_history(outcome.parent_run_id, "storage/bytes_held")
    assert held and max(held, key=lambda m: m.timestamp).value == dir_bytes(trials_root) > 0
