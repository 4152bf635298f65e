"""A real small sweep with toy tasks, then `rewarm analyze` and `rewarm report` on it, and the
report rendered in headless Chromium (Debian's package, installed by `make test`)."""

import json
import os
import re
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from sweeps.execution.driver import run_sweep
from tests.conftest import require, small_spec, seed_mlflow_store

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TASKS = ("next_word", "successor_rank")


@pytest.fixture(scope="module")
def task_sweep(local_ray, toy_world, tmp_path_factory, empty_mlflow_store):
    tmp = tmp_path_factory.mktemp("tasksweep")
    seed_mlflow_store(tmp, empty_mlflow_store)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = small_spec(
        tmp, name="tasks",
        search_space={"name": "default", "params": {"warmup_frac": 0.05, "schedule": "cosine"}},
        training={"task_eval_every_tokens": 2048},  # every eval point
        tasks=[{"name": t, "path": f"toy:{t}", "max_examples": 40} for t in TASKS],
        budget={"num_trials": 4, "max_concurrent": 2, "tokens_per_trial": 512 * 16},
        scheduler={"kind": "none"}, tracking={"uri": uri, "experiment": "tasks"},
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    outcome = run_sweep(spec)
    return uri, outcome, tmp


def test_task_curves_are_logged_per_eval(task_sweep):
    uri, outcome, _ = task_sweep
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    for t in TASKS:
        assert parent.data.metrics[f"base/task/{t}/chance_accuracy"] == 0.25
        assert 0 <= parent.data.metrics[f"base/task/{t}/accuracy"] <= 1
    for trial in outcome.trials:
        run = client.get_run(trial["run_id"]) if "run_id" in trial else None
        run = run or client.search_runs([parent.info.experiment_id],
                                        filter_string=f"tags.`rewarm.trial_id` = '{trial['trial_id']}'")[0]
        evals = client.get_metric_history(run.info.run_id, "eval/L_down")
        for t in TASKS:
            for metric in ("accuracy", "correct_prob", "brier"):
                history = client.get_metric_history(run.info.run_id, f"task/{t}/{metric}")
                assert sorted(m.step for m in history) == sorted(m.step for m in evals), (t, metric)


def _rewarm(args: list[str], capsys) -> tuple[int, str, str]:
    """A `rewarm` command in this process (its exit code, stdout, stderr): the commands read
    MLflow alone, and starting a Python with their imports costs ~3 s each. The console script
    itself runs in test_spec.py and below (`rewarm ui`)."""
    from sweeps.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_fits_every_task_metric_and_logs_to_the_parent(task_sweep, capsys):
    uri, outcome, _ = task_sweep
    code, out, err = _rewarm(["analyze", "--sweep", "tasks", "--tracking-uri", uri, "--format", "json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert {(r["task"], r["metric"]) for r in rows} == {(t, m) for t in TASKS for m in ("accuracy", "correct_prob", "brier")}
    for r in rows:
        assert r["points"] == 4 * 4 and r["trials"] == 4  # 4 trials x 4 evals
        lo, hi = r["L_down_range"]
        assert r["threshold_lo"] <= r["threshold_L_down"] <= r["threshold_hi"] <= hi + 1e-6
        assert -1 <= r["spearman_vs_L_down"] <= 1
    client = MlflowClient(uri)
    assert {"analysis.json", "analysis.txt"} <= {a.path for a in client.list_artifacts(outcome.parent_run_id)}


def test_forecast_gives_every_trial_an_interval_and_ranks_the_untried_configs(task_sweep, capsys):
    uri, outcome, _ = task_sweep
    code, out, err = _rewarm(["forecast", "--sweep", "tasks", "--tracking-uri", uri, "--format", "json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["fitted_on"] == 4 and len(result["trials"]) == 4
    base = result["base"]
    for row in result["trials"]:
        assert row["status"] == "completed" and row["steps_seen"] == row["steps_total"] == 16
        for name in ("gain", "forgetting", "objective"):
            iv = row[name]
            assert iv["lo"] < iv["mean"] < iv["hi"], (name, iv)
        # gain and forgetting are the base's losses minus the forecast losses: the objective of
        # the sweep (joint, weight 1) follows from them
        assert row["objective"]["mean"] == pytest.approx(
            row["gain"]["mean"] - max(row["forgetting"]["mean"], 0.0), abs=1e-9)
        # the whole curve is in: the forecast is where the trial ended, within its interval's width
        obs, iv = row["observed"]["objective"], row["objective"]
        assert abs(iv["mean"] - obs) < iv["hi"] - iv["lo"], (obs, iv)
    # the default space's max_lr and replay ratio are continuous: 5 x 5 candidates, none tried exactly
    untried = result["untried"]
    assert len(untried) == 25 and base["L_down"] > 0
    # inside the finished trials' peak LRs and replay ratios first, best predicted first; the
    # extrapolated ones (the space's corners, beyond any finished trial) after
    order = [(u["extrapolated"], -u["objective"]["mean"]) for u in untried]
    assert order == sorted(order) and len({u["objective"]["mean"] for u in untried}) > 1
    assert any(u["extrapolated"] for u in untried)  # the space's extreme LRs: no trial ran there
    assert all(u["objective"]["lo"] < u["objective"]["mean"] < u["objective"]["hi"] for u in untried)

    code, out, err = _rewarm(["forecast", "--sweep", "tasks", "--tracking-uri", uri], capsys)
    assert code == 0 and "untried grid configs), best predicted first" in out, out + err
    code, out, err = _rewarm(["forecast", "--sweep", "tasks", "--tracking-uri", uri, "--coverage", "1.5"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "rewarm: error: --coverage must be between 0.5 and 1 (exclusive), got 1.5"]


@pytest.fixture(scope="module")
def report(task_sweep):
    from sweeps.cli import main

    uri, outcome, tmp = task_sweep
    out = tmp / "report"
    assert main(["report", "--sweep", "tasks", "--tracking-uri", uri, "--out", str(out)]) == 0
    return out, uri, outcome


def test_report_writes_the_page_and_every_plot_and_logs_them(report):
    out, uri, outcome = report
    page = (out / "report.html").read_text()
    for name in ("curves", "schedules", "tradeoff", "parallel", "importance", "tasks", "forecast"):
        assert (out / f"{name}.png").stat().st_size > 5000, name  # a real plot, not an empty canvas
        assert f'id="plot-{name}"' in page
    assert "Chosen config" in page and "threshold" in page
    logged = {a.path for a in MlflowClient(uri).list_artifacts(outcome.parent_run_id, "report")}
    assert "report/report.html" in logged and "report/tasks.png" in logged


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "Debian's chromium")
    out, _, _ = report
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"data-plots=\"([^\"]*)\"", proc.stdout)
    assert match, "the page's load handler did not run"
    plots = json.loads(match.group(1).replace("&quot;", '"'))
    assert {p["id"] for p in plots} == {f"plot-{n}" for n in
                                        ("curves", "schedules", "tradeoff", "parallel", "importance", "tasks",
                                         "forecast")}
    assert all(p["ok"] and p["w"] > 300 and p["h"] > 200 for p in plots), plots


def _chromium_text(chromium: str, url: str, profile) -> str:
    """The page's visible text after its scripts ran, in headless Chromium."""
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", proc.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_rewarm_ui_opens_on_the_sweeps_runs_in_headless_chromium(task_sweep, rewarm_bin, tmp_path):
    """MLflow 3's UI shows an experiment on its GenAI overview ("No data available") unless asked
    for the machine-learning view; the page `rewarm ui` opens must list the sweep's runs."""
    import time
    import urllib.request

    from tests.mlflow_server import free_port

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "Debian's chromium")
    uri, outcome, _ = task_sweep
    port = free_port()
    ui = subprocess.Popen([rewarm_bin, "ui", "--run", "--sweep", "tasks", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        first = ui.stdout.readline()
        page = re.search(r"open (http\S+)", first).group(1)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "the MLflow UI did not start"
                time.sleep(1)
        text = _chromium_text(chromium, page, tmp_path / "profile")
        assert "Runs" in text and f"{len(outcome.trials) + 1} matching runs" in text, text[:2000]
        assert "No data available" not in text
        # Started without MLflow's GenAI job runner (sweeps/cli.py: _ui).
        import psutil

        started = [" ".join(p.cmdline()) for p in psutil.Process(ui.pid).children(recursive=True)]
        assert started and not [c for c in started if "huey" in c or "_job_runner" in c], started
        # One server worker, uvicorn itself (sweeps/cli.py: _ui): MLflow's default spawns four more.
        assert not [c for c in started if "multiprocessing.spawn" in c], started
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def test_rewarm_ui_prints_the_command_it_would_run(task_sweep, capsys, monkeypatch):
    """Without --run, the command to paste: the same server `--run` starts (no GenAI job runner
    unless the user's environment asks for it) and the page of the sweep's runs."""
    uri, outcome, _ = task_sweep
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    code, out, _ = _rewarm(["ui", "--sweep", "tasks", "--tracking-uri", uri, "--port", "5099"], capsys)
    command, page = out.strip().splitlines()
    assert code == 0 and command.startswith("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false ")
    assert f"--backend-store-uri {uri} " in command and "--port 5099" in command and "--workers 1" in command
    experiment = MlflowClient(uri).get_run(outcome.parent_run_id).info.experiment_id
    assert page == f"then open http://127.0.0.1:5099/#/experiments/{experiment}?workflowType=machine_learning"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # the user's value wins
    _, out, _ = _rewarm(["ui", "--sweep", "tasks", "--tracking-uri", uri, "--port", "5099"], capsys)
    assert out.startswith("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true ")
