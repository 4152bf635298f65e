"""One PNG per finding, in the papers' layouts (Gupta et al.: a panel per max LR, a line per
warmup; Ibrahim et al.: forgetting against replay; Du et al.: task metric against loss)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sweeps.reproduce.findings import EARLY_FRAC, ExperimentResult, Finding, _dedupe_base


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def lr_warmup(exp: ExperimentResult, path: Path) -> None:
    plt = _plt()
    lrs = sorted({t.lr_factor for t in exp.trials})
    warmups = sorted({t.knobs["warmup_frac"] for t in exp.trials})
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(warmups)))
    fig, axes = plt.subplots(2, len(lrs), figsize=(4 * len(lrs), 6.4), sharex=True, sharey="row", squeeze=False)
    for col, lr in enumerate(lrs):
        for w, color in zip(warmups, colors):
            t = exp.one(lr_factor=lr, warmup_frac=w)
            tokens = [s * exp.tokens_per_step for s, _, _ in t.evals]
            axes[0][col].plot(tokens, [u for _, u, _ in t.evals], color=color, label=f"warmup {w:.1%}")
            axes[1][col].plot(tokens, [d for _, _, d in t.evals], color=color)
        axes[0][col].set_title(f"max LR {lr:g}x the pre-training LR")
        axes[1][col].set_xlabel("tokens")
    axes[0][0].set_ylabel("L_up (upstream validation)")
    axes[1][0].set_ylabel("L_down (downstream validation)")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def warmup_early(exp: ExperimentResult, path: Path) -> None:
    plt = _plt()
    lrs = sorted({t.lr_factor for t in exp.trials})
    warmups = sorted({t.knobs["warmup_frac"] for t in exp.trials})
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(warmups)))
    horizon = max(4, round(2 * EARLY_FRAC * exp.total_steps))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4 * len(lrs), 3.4), sharey=True, squeeze=False)
    for col, lr in enumerate(lrs):
        for w, color in zip(warmups, colors):
            pts = [(s, l) for s, l in exp.one(lr_factor=lr, warmup_frac=w).losses if s <= horizon]
            axes[0][col].plot([s for s, _ in pts], [l for _, l in pts], color=color, marker=".", label=f"warmup {w:.1%}")
        axes[0][col].set_title(f"max LR {lr:g}x: first {horizon} steps")
        axes[0][col].set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def same_data(exp: ExperimentResult, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in exp.trials:
        tokens = [s * exp.tokens_per_step for s, _, _ in t.evals]
        ax.plot(tokens, [u for _, u, _ in t.evals], label=f"{t.knobs['schedule']} at {t.lr_factor:g}x")
    ax.axhline(exp.base["L_up"], color="grey", ls=":", label="base model")
    ax.set_xlabel("tokens (of the upstream data itself)")
    ax.set_ylabel("validation loss (upstream)")
    ax.set_title("Continuing on the same data")
    ax.legend(fontsize=8)
    _save(fig, path)


def scratch(grid: ExperimentResult, scratch_exp: ExperimentResult, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.get_cmap("plasma")(np.linspace(0, 0.8, max(1, len(scratch_exp.trials))))
    for t, color in zip(sorted(scratch_exp.trials, key=lambda t: t.lr_factor), colors):
        tokens = [s * scratch_exp.tokens_per_step for s, _, _ in t.evals[1:]]  # step 0 is the pretrained base
        ax.plot(tokens, [d for _, _, d in t.evals[1:]], color=color, ls="--", label=f"from scratch, {t.lr_factor:g}x")
        for cont in grid.where(lr_factor=t.lr_factor, warmup_frac=t.knobs["warmup_frac"]):
            ax.plot([s * grid.tokens_per_step for s, _, _ in cont.evals], [d for _, _, d in cont.evals], color=color,
                    label=f"continued, {t.lr_factor:g}x")
    ax.set_xlabel("tokens")
    ax.set_ylabel("L_down")
    ax.set_title("Continued pre-training vs training from scratch")
    ax.legend(fontsize=8)
    _save(fig, path)


def replay(exp: ExperimentResult, path: Path) -> None:
    plt = _plt()
    ratios = sorted({t.knobs["replay_ratio"] for t in exp.trials})
    forgetting = [exp.one(replay_ratio=r).final[0] - exp.base["L_up"] for r in ratios]
    down = [exp.one(replay_ratio=r).final[1] for r in ratios]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, y, label in ((axes[0], forgetting, "forgetting: final L_up - base L_up"), (axes[1], down, "final L_down")):
        ax.plot([100 * r for r in ratios], y, marker="o")
        ax.set_xscale("symlog", linthresh=0.5)
        ax.set_xlabel("replay (% of each batch from upstream)")
        ax.set_ylabel(label)
    axes[1].axhline(exp.base["L_down"], color="grey", ls=":", label="base model")
    axes[1].legend(fontsize=8)
    _save(fig, path)


def task_vs_loss(points: list[dict], finding: Finding, path: Path) -> None:
    plt = _plt()
    points = _dedupe_base(points)
    tasks = sorted({k.split("/")[0] for p in points for k in p if k.endswith("/accuracy")})
    metrics = ("accuracy", "correct_prob", "brier")
    fig, axes = plt.subplots(max(1, len(tasks)), 3, figsize=(12, 3.4 * max(1, len(tasks))), squeeze=False)
    for row, task in enumerate(tasks):
        pts = [p for p in points if f"{task}/accuracy" in p]
        chance = finding.measured.get(task, {}).get("chance", 0.25)
        theta = finding.measured.get(task, {}).get("threshold_L_down")
        scratch = [p["trial"].startswith("from-scratch") for p in pts]
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for is_scratch, marker, label in ((False, "o", "continued (and base, step 0)"), (True, "x", "from scratch")):
                sel = [p for p, s in zip(pts, scratch) if s == is_scratch]
                ax.scatter([p["L_down"] for p in sel], [p[f"{task}/{metric}"] for p in sel], s=12, marker=marker, label=label)
            ax.axhline(1 - chance if metric == "brier" else chance, color="grey", ls=":", label="chance")
            if theta is not None:
                ax.axvline(theta, color="red", ls="--", label=f"threshold {theta:.2f}")
            ax.invert_xaxis()  # training moves right: the loss falls
            ax.set_xlabel("L_down")
            ax.set_title(f"{task}: {metric}")
        axes[row][0].legend(fontsize=7)
    _save(fig, path)
