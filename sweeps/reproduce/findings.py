"""Each paper finding as a pure check over the experiments' curves: the numbers, and whether it holds.

Inputs are `ExperimentResult`s (what `collect.py` reads back from MLflow); nothing here touches
a store, so every check is tested on literal tables (tests/test_reproduce.py). The thresholds
("clearly", "barely") are stated once, below, with the reason for each; a finding that does not
show is reported as not holding, with its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sweeps.results.loss_perspective import spearman, threshold_fit

# What the words of the papers' statements mean here.
BARELY = 0.10  # "barely changes": the spread of final L_down is under 10% of the mean downstream gain
CLEARLY = 0.10  # "clearly cuts forgetting": by at least 10% of the forgetting without replay
LITTLE = 0.10  # "costs little downstream": L_down higher by under 10% of the gain without replay
EARLY_FRAC = 0.05  # the "early" part of a run: its first 5% of steps (the warmup is at most 2%)
AT_CHANCE = 0.06  # accuracy within 2 standard errors of chance (200 four-way examples: 0.031)
ABOVE_CHANCE = 0.10  # "leaves chance": mean accuracy at least 10 points above it
MIN_SIDE_POINTS = 3  # task evaluations needed on each side of a threshold


@dataclass
class TrialCurve:
    """One trial of an experiment, as recorded."""

    knobs: dict  # warmup_frac, max_lr, replay_ratio, schedule
    lr_factor: float  # max_lr / the model's pre-training max LR
    status: str
    evals: list[tuple[int, float, float]]  # (step, L_up, L_down), step 0 = the base model
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    tasks: list[dict] = field(default_factory=list)  # {"step", "L_down", "<task>/<metric>": value}

    @property
    def final(self) -> tuple[float, float]:
        """(L_up, L_down) at the last evaluation."""
        return self.evals[-1][1], self.evals[-1][2]


@dataclass
class ExperimentResult:
    name: str
    sweep: str
    total_steps: int
    base: dict  # {"L_up", "L_down", "tasks": {task: {metric: value, "chance_accuracy": c}}}
    trials: list[TrialCurve]
    uniform_loss: float  # ln(vocabulary size): the loss of a uniform guess over the tokens
    tokens_per_step: int = 1
    sweep_wall_s: float = 0.0  # the sweep's parent run, start to end, as MLflow recorded it

    def where(self, **knobs) -> list[TrialCurve]:
        return [t for t in self.trials if all(_close(t.knobs.get(k) if k != "lr_factor" else t.lr_factor, v)
                                              for k, v in knobs.items())]

    def one(self, **knobs) -> TrialCurve:
        found = self.where(**knobs)
        if len(found) != 1:
            raise KeyError(f"{self.name}: {len(found)} trials match {knobs}")
        return found[0]


@dataclass
class Finding:
    id: str
    paper: str
    statement: str  # the paper's own claim
    check: str  # how it is tested here
    holds: bool | None  # None: the experiments it needs did not run (or did not finish)
    measured: dict  # the numbers
    summary: str  # the numbers in one line
    figure: str | None = None


def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def _first_eval_after(trial: TrialCurve, step: int) -> tuple[int, float, float]:
    return next(e for e in trial.evals if e[0] >= step)


def _lr_grid(exp: ExperimentResult) -> tuple[list[float], list[float]]:
    return sorted({t.lr_factor for t in exp.trials}), sorted({t.knobs["warmup_frac"] for t in exp.trials})


# --------------------------------------------------------------------------- the world itself


def base_worse_but_not_lost(exp: ExperimentResult) -> Finding:
    up, down, uniform = exp.base["L_up"], exp.base["L_down"], exp.uniform_loss
    return Finding(
        "base-worse-downstream", "world",
        "Continual pre-training starts from a model that is worse on the new domain than on its own, not from one that knows nothing.",
        "the base model's L_down is above its L_up and below the loss of a uniform guess over the tokens",
        up < down < uniform, {"L_up": up, "L_down": down, "uniform": uniform},
        f"base L_up {up:.3f}, L_down {down:.3f} (+{down - up:.3f}), uniform guess {uniform:.3f}")


def learning_spread(exp: ExperimentResult) -> Finding:
    """Per trial: the share of its whole L_down drop made in the first 1/16 of the run, and the
    drop over the last quarter (which must be > 0: still learning when the budget ends)."""
    first, last = {}, {}
    for i, t in enumerate(exp.trials):
        drop = exp.base["L_down"] - t.final[1]
        early = _first_eval_after(t, exp.total_steps // 16)
        q3 = _first_eval_after(t, (3 * exp.total_steps) // 4)
        first[i] = (exp.base["L_down"] - early[2]) / drop if drop > 0 else float("nan")
        last[i] = q3[2] - t.final[1]
    holds = all(v > 0 for v in last.values())
    return Finding(
        "learning-spread", "world",
        "CPT curves keep falling through the budget.",
        "every trial of the LR x warmup grid still lowers L_down over the last quarter of its steps "
        "(the share made in the first 1/16 is reported too)",
        holds, {"last_quarter_drop": last, "share_in_first_sixteenth": first},
        f"last-quarter drop {min(last.values()):.4f}-{max(last.values()):.4f} nats; "
        f"share of the whole drop made in the first 1/16: {np.nanmin(list(first.values())):.0%}-"
        f"{np.nanmax(list(first.values())):.0%}",
        "gupta2023_lr_warmup.png")


# --------------------------------------------------------------------------- Gupta et al. 2023


def lr_gain_and_forgetting(exp: ExperimentResult) -> Finding:
    lrs, warmups = _lr_grid(exp)
    base_up, base_down = exp.base["L_up"], exp.base["L_down"]
    gain = {lr: float(np.mean([base_down - t.final[1] for t in exp.where(lr_factor=lr)])) for lr in lrs}
    forgetting = {lr: float(np.mean([t.final[0] - base_up for t in exp.where(lr_factor=lr)])) for lr in lrs}
    holds = all(np.diff([gain[lr] for lr in lrs]) > 0) and all(np.diff([forgetting[lr] for lr in lrs]) > 0)
    return Finding(
        "lr-gain-forgetting", "gupta2023",
        "A higher maximum learning rate gives more adaptation to the downstream data and more forgetting of the upstream data.",
        f"mean over {len(warmups)} warmups: downstream gain and upstream forgetting both rise strictly with max LR",
        holds, {"gain": gain, "forgetting": forgetting},
        "; ".join(f"{lr:g}x: gain {gain[lr]:.3f}, forgetting {forgetting[lr]:.3f}" for lr in lrs),
        "gupta2023_lr_warmup.png")


def high_lr_behind_then_ahead(exp: ExperimentResult) -> Finding:
    lrs, _ = _lr_grid(exp)
    top, ref = max(lrs), 1.0 if 1.0 in lrs else lrs[len(lrs) // 2]
    first = min(e[0] for t in exp.trials for e in t.evals if e[0] > 0)

    def mean_down(lr, at_end):
        trials = exp.where(lr_factor=lr)
        return float(np.mean([t.final[1] if at_end else _first_eval_after(t, first)[2] for t in trials]))

    early = {lr: mean_down(lr, False) for lr in lrs}
    end = {lr: mean_down(lr, True) for lr in lrs}
    holds = early[top] > early[ref] and end[top] == min(end.values())
    return Finding(
        "high-lr-behind-then-ahead", "gupta2023",
        "Re-warming to a higher learning rate first raises the loss more, but it ends lower on the downstream data.",
        f"the {top:g}x trials' mean L_down is above the {ref:g}x trials' at the first evaluation (step {first}) "
        f"and the lowest of all max LRs at the end",
        holds, {"first_eval_step": first, "L_down_first_eval": early, "L_down_end": end},
        f"step {first}: " + ", ".join(f"{lr:g}x {early[lr]:.3f}" for lr in lrs)
        + " | end: " + ", ".join(f"{lr:g}x {end[lr]:.3f}" for lr in lrs),
        "gupta2023_lr_warmup.png")


def warmup_barely_matters(exp: ExperimentResult) -> Finding:
    lrs, warmups = _lr_grid(exp)
    early_steps = max(1, round(EARLY_FRAC * exp.total_steps))
    spread, rel_spread, peak = {}, {}, {}
    for lr in lrs:
        finals = [exp.one(lr_factor=lr, warmup_frac=w).final[1] for w in warmups]
        gain = exp.base["L_down"] - float(np.mean(finals))
        spread[lr] = float(max(finals) - min(finals))
        rel_spread[lr] = spread[lr] / gain if gain > 0 else float("inf")
        # From step 2: step 1's loss is taken on the base's weights, before any update, so it is
        # the same whatever the warmup and would be every run's peak when the loss only falls.
        peak[lr] = {w: float(max(l for s, l in exp.one(lr_factor=lr, warmup_frac=w).losses if 2 <= s <= early_steps))
                    for w in warmups}
    zero, longest = min(warmups), max(warmups)
    holds = (all(r < BARELY for r in rel_spread.values())
             and all(peak[lr][zero] > peak[lr][longest] for lr in lrs))
    return Finding(
        "warmup-barely-matters", "gupta2023",
        "The length of the warmup does not significantly change the final loss; without warmup the loss spikes early.",
        f"at every max LR the final L_down of warmups {', '.join(f'{w:.1%}' for w in warmups)} spans under "
        f"{BARELY:.0%} of the mean gain, and the peak training loss of steps 2-{early_steps} is higher "
        f"at {zero:.0%} warmup than at {longest:.0%}",
        holds, {"final_spread": spread, "spread_over_gain": rel_spread, "early_peak_loss": peak, "early_steps": early_steps},
        "; ".join(f"{lr:g}x: spread {spread[lr]:.4f} ({rel_spread[lr]:.1%} of gain), early peak "
                  f"{peak[lr][zero]:.3f} at {zero:.0%} vs {peak[lr][longest]:.3f} at {longest:.0%}" for lr in lrs),
        "gupta2023_warmup.png")


def rewarming_same_data_hurts(exp: ExperimentResult, final_lr_factor: float) -> Finding:
    rewarmed = exp.one(schedule="cosine", lr_factor=1.0)
    constant = exp.one(schedule="constant", lr_factor=final_lr_factor)
    r, c = rewarmed.final[1], constant.final[1]
    return Finding(
        "rewarm-same-data-hurts", "gupta2023",
        "Re-warming the learning rate hurts even when training continues on the same data (Pile to Pile).",
        f"on the upstream data itself, the trial re-warmed to 1x (cosine) ends with a higher loss than the one "
        f"continued at the base's final constant LR ({final_lr_factor:g}x)",
        r > c, {"rewarmed_end": r, "constant_end": c, "base": exp.base["L_up"]},
        f"re-warmed {r:.4f} vs constant {c:.4f} (base {exp.base['L_up']:.4f})",
        "gupta2023_same_data.png")


def beats_from_scratch(rewarm: ExperimentResult, scratch: ExperimentResult) -> Finding:
    lrs = sorted({t.lr_factor for t in scratch.trials})
    pairs = {}
    for lr in lrs:
        cont = rewarm.where(lr_factor=lr, warmup_frac=scratch.one(lr_factor=lr).knobs["warmup_frac"])
        if cont:
            pairs[lr] = (cont[0].final[1], scratch.one(lr_factor=lr).final[1])
    holds = bool(pairs) and all(c < s for c, s in pairs.values())
    return Finding(
        "beats-from-scratch", "gupta2023",
        "Continually pre-trained models outperform the same model trained from scratch on the downstream data.",
        "at every max LR, the re-warmed base ends with a lower L_down than the same architecture from random weights "
        "on the same tokens",
        holds, {"continued_vs_scratch": {lr: {"continued": c, "scratch": s} for lr, (c, s) in pairs.items()}},
        "; ".join(f"{lr:g}x: continued {c:.3f} vs scratch {s:.3f}" for lr, (c, s) in pairs.items()),
        "gupta2023_scratch.png")


# --------------------------------------------------------------------------- Ibrahim et al. 2024


def _forgetting_by_replay(exp: ExperimentResult) -> tuple[list[float], dict, dict]:
    ratios = sorted({t.knobs["replay_ratio"] for t in exp.trials})
    forgetting = {r: exp.one(replay_ratio=r).final[0] - exp.base["L_up"] for r in ratios}
    down = {r: exp.one(replay_ratio=r).final[1] for r in ratios}
    return ratios, forgetting, down


def small_replay_cuts_forgetting(exp: ExperimentResult) -> Finding:
    ratios, forgetting, _ = _forgetting_by_replay(exp)
    small = [r for r in ratios if 0.01 <= r <= 0.05]
    cut = {r: 1 - forgetting[r] / forgetting[0.0] for r in small}
    holds = bool(small) and all(c >= CLEARLY for c in cut.values())
    return Finding(
        "small-replay-cuts-forgetting", "ibrahim2024",
        "Replaying even a small share of upstream data (1-5%) already mitigates forgetting substantially.",
        f"each replay ratio in 1-5% cuts forgetting by at least {CLEARLY:.0%} of the forgetting without replay",
        holds, {"forgetting": forgetting, "cut": cut},
        "; ".join(f"{r:.1%}: forgetting {forgetting[r]:.3f} (cut {cut[r]:.0%})" for r in small)
        + f" vs {forgetting[0.0]:.3f} without replay",
        "ibrahim2024_replay.png")


def more_replay_cuts_more(exp: ExperimentResult) -> Finding:
    ratios, forgetting, _ = _forgetting_by_replay(exp)
    values = [forgetting[r] for r in ratios]
    holds = all(np.diff(values) < 0)
    return Finding(
        "more-replay-cuts-more", "ibrahim2024",
        "More replay forgets less.",
        f"forgetting falls strictly from each replay ratio to the next ({', '.join(f'{r:.1%}' for r in ratios)})",
        holds, {"forgetting": forgetting, "spearman": spearman(ratios, values)},
        ", ".join(f"{r:.1%}: {forgetting[r]:.3f}" for r in ratios),
        "ibrahim2024_replay.png")


def small_replay_costs_little(exp: ExperimentResult) -> Finding:
    ratios, _, down = _forgetting_by_replay(exp)
    gain = exp.base["L_down"] - down[0.0]
    small = [r for r in ratios if 0 < r <= 0.05]
    cost = {r: (down[r] - down[0.0]) / gain for r in small}
    holds = all(c < LITTLE for c in cost.values())
    return Finding(
        "small-replay-costs-little", "ibrahim2024",
        "Small amounts of replay barely reduce adaptation to the new data.",
        f"with up to 5% replay, the final L_down is higher than without replay by under {LITTLE:.0%} of the gain",
        holds, {"L_down": down, "cost_over_gain": cost},
        "; ".join(f"{r:.1%}: L_down {down[r]:.3f} (gain lost: {cost[r]:+.1%})" for r in small)
        + f" vs {down[0.0]:.3f} without replay",
        "ibrahim2024_replay.png")


# --------------------------------------------------------------------------- Du et al. 2024


def task_points(experiments: list[ExperimentResult]) -> list[dict]:
    """Every task evaluation of those experiments, plus each one's base model (step 0)."""
    points = []
    for exp in experiments:
        base = {"step": 0, "L_down": exp.base["L_down"], "trial": f"{exp.name}/base"}
        for task, metrics in exp.base.get("tasks", {}).items():
            base.update({f"{task}/{m}": v for m, v in metrics.items() if m != "chance_accuracy"})
        points.append(base)
        for i, trial in enumerate(exp.trials):
            points += [{**p, "trial": f"{exp.name}/{i}"} for p in trial.tasks]
    return points


def _dedupe_base(points: list[dict]) -> list[dict]:
    seen, out = set(), []
    for p in points:
        key = (p["step"], round(p["L_down"], 9)) if p["step"] == 0 else id(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def task_threshold(points: list[dict], chance: dict[str, float]) -> Finding:
    """`chance`: task -> chance accuracy. Holds where at least one task shows it (the paper: some tasks)."""
    points = _dedupe_base(points)
    per_task, any_holds = {}, False
    for task, c in sorted(chance.items()):
        pts = [p for p in points if f"{task}/accuracy" in p]
        if len(pts) < 2 * MIN_SIDE_POINTS:
            continue
        loss = np.array([p["L_down"] for p in pts])
        acc = np.array([p[f"{task}/accuracy"] for p in pts])
        theta = float(threshold_fit(loss, acc, c)["theta"])
        above, below = acc[loss >= theta], acc[loss < theta]
        ok = (len(above) >= MIN_SIDE_POINTS and len(below) >= MIN_SIDE_POINTS
              and abs(float(above.mean()) - c) <= AT_CHANCE and float(below.mean()) >= c + ABOVE_CHANCE)
        any_holds |= ok
        per_task[task] = {"threshold_L_down": theta, "points_above": int(len(above)), "points_below": int(len(below)),
                          "accuracy_above": float(above.mean()) if len(above) else None,
                          "accuracy_below": float(below.mean()) if len(below) else None, "chance": c,
                          "L_down_range": [float(loss.min()), float(loss.max())], "holds": ok}
    return Finding(
        "task-threshold", "du2024",
        "Some tasks stay at chance until the pre-training loss falls below a threshold, whatever model or data got it there.",
        f"a task's accuracy fitted against L_down (broken stick at chance): at least {MIN_SIDE_POINTS} evaluations on "
        f"each side, within {AT_CHANCE:.2f} of chance above the threshold and at least {ABOVE_CHANCE:.2f} above "
        f"chance below it; evaluations include each base model (step 0) and models trained from scratch",
        any_holds if per_task else None, per_task,
        "; ".join(f"{t}: threshold {v['threshold_L_down']:.2f}, accuracy {_fmt(v['accuracy_above'])} above "
                  f"({v['points_above']} evals) vs {_fmt(v['accuracy_below'])} below ({v['points_below']}), chance {v['chance']:.2f}"
                  for t, v in per_task.items()),
        "du2024_task_vs_loss.png")


def continuous_metrics_track_loss(points: list[dict], tasks: list[str]) -> Finding:
    points = _dedupe_base(points)
    rho = {}
    for task in tasks:
        pts = [p for p in points if f"{task}/accuracy" in p]
        if len(pts) < 3:
            continue
        loss = [p["L_down"] for p in pts]
        rho[task] = {m: spearman(loss, [p[f"{task}/{m}"] for p in pts]) for m in ("accuracy", "correct_prob", "brier")}
    # Loss falls as ability rises: accuracy and correct-choice probability fall with loss (rho < 0),
    # Brier rises with it (rho > 0). "As well as accuracy": at least as strong a rank correlation.
    holds = bool(rho) and all(-r["correct_prob"] >= -r["accuracy"] and r["brier"] >= -r["accuracy"] for r in rho.values())
    return Finding(
        "continuous-metrics", "du2024",
        "Continuous metrics (probability of the correct choice, Brier score) show the same dependence on the loss as accuracy.",
        "for every task, Spearman's rho of L_down with the correct-choice probability (negative) and the Brier score "
        "(positive) is at least as strong as with accuracy",
        holds if rho else None, {"spearman_vs_L_down": rho},
        "; ".join(f"{t}: accuracy {r['accuracy']:+.2f}, correct prob {r['correct_prob']:+.2f}, Brier {r['brier']:+.2f}"
                  for t, r in rho.items()),
        "du2024_task_vs_loss.png")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def findings_for(paper: str, results: dict[str, ExperimentResult], final_lr_factor: float) -> list[Finding]:
    """The findings of one paper from the experiments that ran (`results` by experiment name)."""
    if paper == "gupta2023":
        grid = results["lr-warmup"]
        return [base_worse_but_not_lost(grid), learning_spread(grid), lr_gain_and_forgetting(grid), high_lr_behind_then_ahead(grid), warmup_barely_matters(grid),
                rewarming_same_data_hurts(results["same-data"], final_lr_factor),
                beats_from_scratch(grid, results["from-scratch"])]
    if paper == "ibrahim2024":
        replay = results["replay"]
        return [small_replay_cuts_forgetting(replay), more_replay_cuts_more(replay), small_replay_costs_little(replay)]
    if paper == "du2024":
        used = [results[n] for n in ("lr-warmup", "from-scratch")]
        points = task_points(used)
        chance = {t: m.get("chance_accuracy", 0.25) for t, m in used[0].base.get("tasks", {}).items()}
        return [task_threshold(points, chance), continuous_metrics_track_loss(points, sorted(chance))]
    raise KeyError(paper)
