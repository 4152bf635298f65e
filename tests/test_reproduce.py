"""`rewarm reproduce`: the experiments' grids, every finding's check on literal curves (holding and
not holding), and a small real run of one paper end to end."""

import json
import subprocess

import pytest

from sweeps.reproduce import findings as F
from sweeps.reproduce.experiments import EXPERIMENTS, ReproduceError, experiments_for, load_base_spec

BASE = {"L_up": 2.0, "L_down": 3.0, "tasks": {"t": {"accuracy": 0.25, "correct_prob": 0.25, "brier": 0.75,
                                                      "chance_accuracy": 0.25}}}
STEPS = 100


def _trial(lr, warmup=0.01, replay=0.0, schedule="cosine", evals=(), losses=()):
    return F.TrialCurve(knobs={"warmup_frac": warmup, "max_lr": lr * 1e-3, "replay_ratio": replay, "schedule": schedule},
                        lr_factor=lr, status="completed", evals=[(0, BASE["L_up"], BASE["L_down"]), *evals],
                        losses=list(losses))


def _exp(name, trials, base=BASE):
    return F.ExperimentResult(name=name, sweep=f"r-{name}", total_steps=STEPS, base=base, trials=trials, uniform_loss=6.2)


def _grid(end_down: dict, first_down: dict, end_up: dict, spike: float = 1.0, warmup_spread: float = 0.01):
    """A 3 LR x 2 warmup grid: curves through (step 8, first_down), (75, ...), (100, end) per LR."""
    trials = []
    for lr in (0.5, 1.0, 2.0):
        for w in (0.0, 0.02):
            d_end = end_down[lr] + (warmup_spread if w == 0.0 else 0.0)
            # Step 1 is taken on the base's weights (the same in every trial, and the highest):
            # the early spike is judged from step 2 on.
            losses = [(s, 5.0 if s == 1 else 3.0 + (spike if (w == 0.0 and s == 2) else 0.0)) for s in range(1, 11)]
            trials.append(_trial(lr, w, evals=[(8, 2.1, first_down[lr]), (75, end_up[lr], d_end + 0.05),
                                               (100, end_up[lr], d_end)], losses=losses))
    return _exp("lr-warmup", trials)


GOOD = dict(end_down={0.5: 2.5, 1.0: 2.4, 2.0: 2.3}, first_down={0.5: 2.9, 1.0: 2.8, 2.0: 2.85},
            end_up={0.5: 2.2, 1.0: 2.3, 2.0: 2.4})


def test_gupta_findings_hold_on_curves_that_show_them():
    grid = _grid(**GOOD)
    got = {f.id: f for f in (F.lr_gain_and_forgetting(grid), F.high_lr_behind_then_ahead(grid),
                             F.warmup_barely_matters(grid), F.learning_spread(grid), F.base_worse_but_not_lost(grid))}
    assert all(f.holds for f in got.values()), {k: f.summary for k, f in got.items()}
    assert got["lr-gain-forgetting"].measured["gain"] == pytest.approx({0.5: 0.495, 1.0: 0.595, 2.0: 0.695})
    assert got["high-lr-behind-then-ahead"].measured["first_eval_step"] == 8
    assert got["warmup-barely-matters"].measured["final_spread"][1.0] == pytest.approx(0.01)


@pytest.mark.parametrize("case, finding", [
    ("no more gain at the top LR", "lr-gain-forgetting"),
    ("the top LR not behind early", "high-lr-behind-then-ahead"),
    ("the top LR not ahead at the end", "high-lr-behind-then-ahead"),
    ("no early spike without warmup", "warmup-barely-matters"),
    ("warmup changes the end", "warmup-barely-matters"),
    ("flat last quarter", "learning-spread"),
])
def test_gupta_findings_fail_on_curves_that_do_not_show_them(case, finding):
    kw = {k: dict(v) for k, v in GOOD.items()}
    spike, spread = 1.0, 0.01
    if case == "no more gain at the top LR":
        kw["end_down"][2.0] = 2.4
    elif case == "the top LR not behind early":
        kw["first_down"][2.0] = 2.7
    elif case == "the top LR not ahead at the end":
        kw["end_down"][2.0] = 2.45
    elif case == "no early spike without warmup":
        spike = 0.0
    elif case == "warmup changes the end":
        spread = 0.2
    grid = _grid(**kw, spike=spike, warmup_spread=spread)
    if case == "flat last quarter":
        grid.trials[0].evals[-2] = (75, *grid.trials[0].evals[-1][1:])
    check = {"lr-gain-forgetting": F.lr_gain_and_forgetting, "high-lr-behind-then-ahead": F.high_lr_behind_then_ahead,
             "warmup-barely-matters": F.warmup_barely_matters, "learning-spread": F.learning_spread}[finding]
    assert check(grid).holds is False


def test_base_must_be_worse_downstream_but_better_than_uniform():
    assert F.base_worse_but_not_lost(_exp("x", [], base={**BASE, "L_down": 7.0})).holds is False  # above uniform 6.2
    assert F.base_worse_but_not_lost(_exp("x", [], base={**BASE, "L_down": 1.9})).holds is False


def test_same_data_and_from_scratch():
    same = _exp("same-data", [_trial(1.0, evals=[(100, 2.05, 2.05)]), _trial(0.1, schedule="constant", evals=[(100, 1.98, 1.98)]),
                              _trial(0.1, evals=[(100, 1.99, 1.99)]), _trial(1.0, schedule="constant", evals=[(100, 2.2, 2.2)])])
    f = F.rewarming_same_data_hurts(same, 0.1)
    assert f.holds and f.measured == {"rewarmed_end": 2.05, "constant_end": 1.98, "base": 2.0}
    same.trials[0].evals[-1] = (100, 1.9, 1.9)
    assert F.rewarming_same_data_hurts(same, 0.1).holds is False

    grid = _exp("lr-warmup", [_trial(lr, evals=[(100, 2.3, d)]) for lr, d in ((0.5, 2.5), (1.0, 2.4))])
    scratch = _exp("from-scratch", [_trial(lr, evals=[(100, 4.0, d)]) for lr, d in ((0.5, 3.5), (1.0, 3.3))])
    assert F.beats_from_scratch(grid, scratch).holds
    scratch.trials[1].evals[-1] = (100, 4.0, 2.3)
    assert F.beats_from_scratch(grid, scratch).holds is False


def _replay(forgetting: dict, down: dict):
    return _exp("replay", [_trial(1.0, replay=r, evals=[(100, BASE["L_up"] + forgetting[r], down[r])]) for r in forgetting])


def test_ibrahim_findings_on_literal_tables():
    ratios = (0.0, 0.01, 0.05, 0.25)
    exp = _replay(dict(zip(ratios, (0.5, 0.4, 0.3, 0.1))), dict(zip(ratios, (2.4, 2.41, 2.43, 2.6))))
    cut, more, cost = F.small_replay_cuts_forgetting(exp), F.more_replay_cuts_more(exp), F.small_replay_costs_little(exp)
    assert cut.holds and cut.measured["cut"] == pytest.approx({0.01: 0.2, 0.05: 0.4})
    assert more.holds and cost.holds and cost.measured["cost_over_gain"][0.05] == pytest.approx(0.05)
    weak = _replay(dict(zip(ratios, (0.5, 0.48, 0.3, 0.32))), dict(zip(ratios, (2.4, 2.41, 2.6, 2.6))))
    assert not F.small_replay_cuts_forgetting(weak).holds  # 1% cuts only 4%
    assert not F.more_replay_cuts_more(weak).holds  # 25% forgets more than 5%
    assert not F.small_replay_costs_little(weak).holds  # 5% costs 33% of the gain


def _points(pairs, trial="lr-warmup/0"):
    return [{"step": i + 1, "L_down": loss, "t/accuracy": acc, "t/correct_prob": 0.5 * acc + 0.1, "t/brier": 1 - acc,
             "trial": trial} for i, (loss, acc) in enumerate(pairs)]


def test_du_threshold_and_continuous_metrics():
    emergent = _points([(5.0, 0.25), (4.5, 0.24), (4.0, 0.26), (3.5, 0.25), (3.0, 0.45), (2.8, 0.55), (2.6, 0.65)])
    f = F.task_threshold(emergent, {"t": 0.25})
    assert f.holds and 3.0 <= f.measured["t"]["threshold_L_down"] <= 3.5
    assert F.continuous_metrics_track_loss(emergent, ["t"]).holds
    never = _points([(5.0, 0.25), (4.5, 0.24), (4.0, 0.26), (3.5, 0.25), (3.0, 0.27), (2.8, 0.26), (2.6, 0.28)])
    assert F.task_threshold(never, {"t": 0.25}).holds is False
    too_few = _points([(5.0, 0.25), (3.0, 0.45)])
    assert F.task_threshold(too_few, {"t": 0.25}).holds is None


def test_experiment_grids_and_specs():
    base = load_base_spec()
    specs = {name: e.spec(base, "p", None) for name, e in EXPERIMENTS.items()}
    assert {n: s.budget.num_trials for n, s in specs.items()} == {"lr-warmup": 12, "same-data": 4, "from-scratch": 3,
                                                                   "replay": 7}
    assert all(s.search_algorithm() == "grid" and s.scheduler.kind == "none" for s in specs.values())
    lr = specs["lr-warmup"].pretrain_lr()
    assert specs["lr-warmup"].knob_params()["max_lr"].values == pytest.approx([0.5 * lr, lr, 2 * lr])
    assert specs["same-data"].data.downstream.path == "toy:upstream"
    assert specs["from-scratch"].model.init == "random" and specs["lr-warmup"].model.init == "pretrained"
    assert specs["replay"].name == "p-replay"
    assert [e.name for e in experiments_for("all")] == ["lr-warmup", "same-data", "from-scratch", "replay"]
    with pytest.raises(ReproduceError, match="unknown paper 'smith2020'"):
        experiments_for("smith2020")


@pytest.mark.slow
def test_reproduce_ibrahim_end_to_end(tmp_path, rewarm_bin, toy_world, cluster_env, monkeypatch, capsys):
    """A real `rewarm reproduce ibrahim2024` on 8 steps per trial: 7 sweeps' trials in MLflow, the
    report, numbers that are MLflow's own; a second call reuses the finished sweep; another budget
    under the same name is refused in one line."""
    from mlflow import MlflowClient

    from sweeps.tracking.records import load_sweep

    env = {**cluster_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = [rewarm_bin, "reproduce", "ibrahim2024", "--tokens-per-trial", "16384", "--out", str(tmp_path / "out"),
            "--set", f"storage_path={tmp_path / 'runs'}"]
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert [f["id"] for f in report["findings"]] == ["small-replay-cuts-forgetting", "more-replay-cuts-more",
                                                     "small-replay-costs-little"]
    _, trials = load_sweep(MlflowClient(env["MLFLOW_TRACKING_URI"]), "reproduce-replay", "rewarm-reproduce")
    assert sorted(t["replay_ratio"] for t in trials) == [0.0, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5]
    assert all(t["status"] == "completed" and t["step"] == 8 for t in trials)
    forgetting = {float(r): v for r, v in report["findings"][1]["measured"]["forgetting"].items()}
    assert forgetting == pytest.approx({t["replay_ratio"]: t["forgetting"] for t in trials}, abs=1e-9)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ibrahim2024_replay.png" in html and (tmp_path / "out" / "ibrahim2024_replay.png").stat().st_size > 10_000

    # The follow-ups in this process, in the same environment (the console script ran above).
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    capsys.readouterr()
    assert main(args[1:]) == 0
    again = capsys.readouterr()
    assert "already finished, reused" in again.out + again.err

    assert main([*args[1:3], "--tokens-per-trial", "32768", *args[5:]]) == 2
    other = capsys.readouterr().err
    assert other.strip().splitlines()[-1].startswith("rewarm: error: sweep 'reproduce-replay' already exists"), other
