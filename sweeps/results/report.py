"""`rewarm report`: one self-contained HTML page (plus the PNGs beside it) for a finished sweep.

Plots, all read back from MLflow: L_up and L_down against tokens for every trial (coloured by
max LR, stopped trials marked), the LR schedules actually run, gain vs forgetting with the
Pareto front and the chosen config, a parallel-coordinates view of knobs vs objective, which
knob matters (rewarm importance), and per-task metric vs L_down with the fitted threshold.
The page embeds the PNGs (base64) so it can be mailed or opened anywhere; it is also logged
to the sweep's parent run.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from search_spaces.knobs import Knob, format_knobs
from sweeps.results.analyze import analyze_sweep, render_table
from sweeps.results.best import format_bytes, rank
from sweeps.results.forecast import SweepForecast, forecast_sweep, render_table as render_forecast
from sweeps.results.importance import TARGETS, sweep_importance
from sweeps.results.pareto import pareto_front
from sweeps.tracking.mlflow_compat import metric_histories
from sweeps.tracking.records import load_sweep
from sweeps.tracking.statuses import ENDED_STATUSES, TrialStatus
from sweeps.tracking.tracker import BYTES_HELD_METRIC, EVAL_PREFIX, STEP_METRICS
from trainers.report_point import TASK_PREFIX
from trainers.errors import UserError

L_DOWN, L_UP, TRAIN_LR = f"{EVAL_PREFIX}L_down", f"{EVAL_PREFIX}L_up", STEP_METRICS["lr"]


class ReportError(UserError, ValueError):
    """A report that cannot be written (reported as a one-line error)."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _histories(client, trials: list[dict], keys: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """trial id -> metric key -> [(step, value)], read in bulk (mlflow_compat)."""
    run_ids = [t["run_id"] for t in trials]
    by_key = {k: metric_histories(client, run_ids, k) for k in keys}
    return {t["trial_id"]: {k: sorted((m.step, m.value) for m in by_key[k][t["run_id"]]) for k in keys}
            for t in trials}


def _lr_colors(trials):
    plt = _plt()
    import matplotlib.colors as mcolors

    lrs = [t.get(Knob.MAX_LR) or 1e-4 for t in trials]
    norm = mcolors.LogNorm(vmin=min(lrs), vmax=max(lrs) * (1.0001 if min(lrs) == max(lrs) else 1))
    cmap = plt.get_cmap("viridis")
    return {t["trial_id"]: cmap(norm(t.get(Knob.MAX_LR) or 1e-4)) for t in trials}, norm, cmap


def _lines(ax, curves: list[list[tuple[float, float]]], colors: list, **style) -> None:
    """Many curves as one LineCollection: one artist, not one per trial (a 1,000-trial sweep)."""
    from matplotlib.collections import LineCollection

    if not curves:
        return
    ax.add_collection(LineCollection(curves, colors=colors, **style))
    ax.autoscale_view()


def plot_curves(trials, hist, tokens_per_step, path: Path) -> None:
    plt = _plt()
    colors, norm, cmap = _lr_colors(trials)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, title in ((axes[0], L_DOWN, "L_down (new domain)"), (axes[1], L_UP, "L_up (old domain)")):
        drawn = [t for t in trials if hist[t["trial_id"]][key]]
        _lines(ax, [[(s * tokens_per_step, v) for s, v in hist[t["trial_id"]][key]] for t in drawn],
               [colors[t["trial_id"]] for t in drawn], lw=1.2, alpha=0.9)
        ends = [hist[t["trial_id"]][key][-1] for t in drawn
                if t["status"] in (TrialStatus.EARLY_STOPPED, TrialStatus.DIVERGED, TrialStatus.FAILED)]
        if ends:
            ax.scatter([s * tokens_per_step for s, _ in ends], [v for _, v in ends], marker="x", color="crimson", s=40)
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.set_ylabel("nats/token")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="max LR")
    axes[0].plot([], [], "x", color="crimson", label="stopped early / diverged")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_schedules(trials, hist, tokens_per_step, path: Path) -> None:
    plt = _plt()
    colors, norm, cmap = _lr_colors(trials)
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = [t for t in trials if hist[t["trial_id"]][TRAIN_LR]]
    _lines(ax, [[(s * tokens_per_step, v) for s, v in hist[t["trial_id"]][TRAIN_LR]] for t in drawn],
           [colors[t["trial_id"]] for t in drawn], lw=1)
    ax.set_xlabel("tokens")
    ax.set_ylabel("learning rate (as run)")
    ax.set_title("LR schedules actually run (re-warmed, then decayed)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="max LR")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(trials, chosen, path: Path) -> None:
    plt = _plt()
    done = [t for t in trials if "gain" in t and "forgetting" in t and t["status"] not in (TrialStatus.DIVERGED, TrialStatus.FAILED)]
    fig, ax = plt.subplots(figsize=(7, 5))
    if done:
        pts = [(t["gain"], t["forgetting"]) for t in done]
        sc = ax.scatter([p[1] for p in pts], [p[0] for p in pts], c=[t.get(Knob.REPLAY_RATIO, 0) for t in done],
                        cmap="plasma", s=[60 if t["status"] == TrialStatus.COMPLETED else 25 for t in done], edgecolors="k", lw=0.5)
        fig.colorbar(sc, ax=ax, label="replay ratio")
        front = pareto_front(pts)
        ax.plot([pts[i][1] for i in front], [pts[i][0] for i in front], "k--", lw=1, label="Pareto front")
        if chosen is not None:
            ax.scatter([chosen["forgetting"]], [chosen["gain"]], marker="*", s=300, color="gold", edgecolors="k",
                       zorder=5, label=f"chosen ({chosen['trial_id']})")
    ax.set_xlabel("forgetting (L_up - base, nats/token)")
    ax.set_ylabel("gain (base - L_down, nats/token)")
    ax.set_title("Gain vs forgetting (large: completed, small: stopped early)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parallel(trials, path: Path) -> None:
    plt = _plt()
    axes_spec = [(Knob.WARMUP_FRAC, False), (Knob.MAX_LR, True), (Knob.REPLAY_RATIO, False), ("objective", False)]
    rows = [t for t in trials if all(isinstance(t.get(k), (int, float)) for k, _ in axes_spec)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if rows:
        data = np.array([[math.log10(t[k]) if log else t[k] for k, log in axes_spec] for t in rows], dtype=float)
        lo, hi = data.min(axis=0), data.max(axis=0)
        scaled = (data - lo) / np.where(hi > lo, hi - lo, 1.0)
        obj = data[:, -1]
        cmap = plt.get_cmap("coolwarm")
        for row, o in zip(scaled, obj):
            ax.plot(range(len(axes_spec)), row, color=cmap((o - obj.min()) / (np.ptp(obj) or 1.0)), alpha=0.8)
        for i, (k, log) in enumerate(axes_spec):
            ax.text(i, -0.08, f"{lo[i]:.3g}" if not log else f"{10 ** lo[i]:.2g}", ha="center", fontsize=7)
            ax.text(i, 1.04, f"{hi[i]:.3g}" if not log else f"{10 ** hi[i]:.2g}", ha="center", fontsize=7)
    ax.set_xticks(range(len(axes_spec)))
    ax.set_xticklabels([k + (" (log)" if log else "") for k, log in axes_spec])
    ax.set_yticks([])
    ax.set_title("Knobs vs objective (colour: objective, red = best)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tasks(analysis: dict, path: Path) -> None:
    plt = _plt()
    rows = [r for r in analysis["rows"] if r["metric"] in ("accuracy", "correct_prob")]
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(max(1, len(tasks)), 2, figsize=(10, 3.6 * max(1, len(tasks))), squeeze=False)
    for i, task in enumerate(tasks):
        for j, metric in enumerate(("accuracy", "correct_prob")):
            ax = axes[i][j]
            key = f"{TASK_PREFIX}{task}/{metric}"
            pts = [p for p in analysis["points"] if key in p]
            lr = np.array([p.get(Knob.MAX_LR) or 1.0 for p in pts], float)
            # No marker edges: a 1,000-trial sweep has ~10^5 points, and edges double the drawing.
            ax.scatter(np.array([p["L_down"] for p in pts]), np.array([p[key] for p in pts]), c=np.log10(lr),
                       cmap="viridis", s=18 if len(pts) < 2000 else 4, linewidths=0)
            row = next((r for r in rows if r["task"] == task and r["metric"] == metric), None)
            if row:
                ax.axhline(row["chance"], color="grey", ls=":", label="chance")
                ax.axvline(row["threshold_L_down"], color="crimson", ls="--", label="threshold")
                ax.axvspan(row["threshold_lo"], row["threshold_hi"], color="crimson", alpha=0.1, label="90% CI")
            ax.invert_xaxis()  # training moves right: loss falls
            ax.set_xlabel("L_down (nats/token)")
            ax.set_ylabel(metric)
            ax.set_title(f"{task}: {metric} vs loss")
            ax.legend(fontsize=7)
    if not tasks:
        axes[0][0].text(0.5, 0.5, "no tasks in this sweep", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importance(result: dict, path: Path) -> None:
    """Knob importance for each target (rewarm importance), one group of bars per knob."""
    plt = _plt()
    knobs = sorted(result["searched"], key=lambda k: -(result["importance"]["objective"][k] or 0.0))
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.8 * len(knobs)))
    height = 0.8 / len(TARGETS)
    for i, target in enumerate(TARGETS):
        ax.barh([j + i * height for j in range(len(knobs))], [result["importance"][target][k] or 0.0 for k in knobs],
                height=height, label=target if result["importance"][target][knobs[0]] is not None
                else f"{target} (constant)")
    ax.set_yticks([j + height for j in range(len(knobs))], knobs)
    ax.invert_yaxis()
    ax.set_xlabel(f"importance (Optuna fANOVA over {result['trials']} completed trials; each target sums to 1)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forecast(result: SweepForecast, path: Path, top_untried: int = 5) -> None:
    """Each trial's forecast final objective with its interval (observed final as a cross), then
    the best predicted configs not tried yet."""
    plt = _plt()
    rows = [r for r in result.trials if r["objective"]] + [u for u in result.untried if not u["extrapolated"]][:top_untried]
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.28 * len(rows)))
    for y, r in enumerate(rows):
        iv, untried = r["objective"], "trial_id" not in r
        color = ("tab:gray" if r["extrapolated"] else "tab:green" if untried
                 else "tab:blue" if r["status"] == TrialStatus.COMPLETED else "tab:orange")
        if iv["lo"] is not None:
            ax.plot([iv["lo"], iv["hi"]], [y, y], color=color, lw=2, alpha=0.6)
        ax.plot(iv["mean"], y, "o", color=color, ms=4)
        observed = None if untried else r["observed"].get("objective")
        if observed is not None and r["status"] == TrialStatus.COMPLETED:
            ax.plot(observed, y, "kx", ms=5)
    ax.set_yticks(range(len(rows)), [r["trial_id"] if "trial_id" in r else "untried: " + format_knobs(r["knobs"])
                                     for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"final objective: forecast and {result.coverage:.0%} interval (blue completed, orange stopped or "
                  f"running, green untried, grey extrapolated; x observed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(client, sweep: str, out_dir: Path, experiment: str | None = None,
                 tracking_uri: str | None = None) -> Path:
    """The report page of `sweep` in `out_dir`; `tracking_uri` (the client's store) finds the
    sweep's Optuna study for the knob-importance plot."""

    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"--out {out_dir} exists and is not a directory")
    parent, trials = load_sweep(client, sweep, experiment)
    if not trials:
        raise ReportError(f"sweep {sweep!r} has no trial runs yet; nothing to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = analyze_sweep(client, sweep, experiment, log_to_parent=False, loaded=(parent, trials))
    params = parent.data.params
    tokens_per_step = int(params.get("training.global_batch_size", 1)) * int(params.get("data.seq_len", 1))
    hist = _histories(client, trials, (L_DOWN, L_UP, TRAIN_LR))
    ranked = rank(trials)
    chosen = ranked[0] if ranked else None
    plot_curves(trials, hist, tokens_per_step, out_dir / "curves.png")
    plot_schedules(trials, hist, tokens_per_step, out_dir / "schedules.png")
    plot_tradeoff(trials, chosen, out_dir / "tradeoff.png")
    plot_parallel(trials, out_dir / "parallel.png")
    plot_tasks(analysis, out_dir / "tasks.png")
    try:
        importance = sweep_importance(client, sweep, tracking_uri or client.tracking_uri, experiment, parent=parent)
        plot_importance(importance, out_dir / "importance.png")
    except UserError as exc:  # too few completed trials, or a sweep kept no study: say which
        importance = str(exc)
    try:
        forecast = forecast_sweep(client, sweep, experiment, loaded=(parent, trials))
        plot_forecast(forecast, out_dir / "forecast.png")
    except UserError as exc:  # too few ended trials, or a task objective: say which
        forecast = str(exc)
    page = out_dir / "report.html"
    page.write_text(_html(sweep, trials, chosen, analysis, importance, forecast,
                          parent.data.metrics.get(BYTES_HELD_METRIC), out_dir))
    client.log_artifacts(parent.info.run_id, str(out_dir), "report")
    return page


def _html(sweep, trials, chosen, analysis, importance: dict | str, forecast: SweepForecast | str, bytes_held: float | None, out_dir: Path) -> str:
    def img(name, caption):
        data = base64.b64encode((out_dir / f"{name}.png").read_bytes()).decode()
        return (f'<figure><img class="plot" id="plot-{name}" alt="{html.escape(caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')

    counts = {s: sum(t["status"] == s for t in trials) for s in ENDED_STATUSES}
    held = (f"<p>Checkpoints held on storage: {format_bytes(bytes_held)} (after the last retention pass).</p>"
            if bytes_held is not None else "")
    best = (f"<p><b>Chosen config</b> ({html.escape(str(chosen['trial_id']))}): "
            + html.escape(format_knobs(chosen)).replace(" ", ", ")
            + f" &mdash; objective {chosen.get('objective', float('nan')):+.4f}, gain {chosen.get('gain', float('nan')):+.4f}, "
            f"forgetting {chosen.get('forgetting', float('nan')):+.4f}</p>") if chosen else "<p>No ranked trial.</p>"
    # The script records how each plot decoded, for the headless-browser check (tests/test_report.py).
    script = ("<script>window.addEventListener('load',()=>{const r=[...document.querySelectorAll('img.plot')]"
              ".map(i=>({id:i.id,w:i.naturalWidth,h:i.naturalHeight,ok:i.complete&&i.naturalWidth>0}));"
              "document.body.setAttribute('data-plots',JSON.stringify(r));});</script>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Rewarm sweep {html.escape(sweep)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
pre{{background:#f4f4f4;padding:1em;overflow-x:auto;font-size:12px}}</style></head>
<body><h1>Sweep {html.escape(sweep)}</h1>
<p>{len(trials)} trials: {counts[TrialStatus.COMPLETED]} completed, {counts[TrialStatus.EARLY_STOPPED]} stopped early,
{counts[TrialStatus.DIVERGED]} diverged, {counts[TrialStatus.FAILED]} failed.</p>
{best}
{held}
{img("curves", "L_down and L_up against tokens for every trial, coloured by max LR; x marks trials stopped early")}
{img("schedules", "The LR schedules actually run")}
{img("tradeoff", "Gain vs forgetting, with the Pareto front and the chosen config")}
{img("parallel", "Knobs vs objective")}
<h2>Which knob matters</h2>
{img("importance", "Knob importance for the objective, gain and forgetting") if isinstance(importance, dict)
 else f"<p>{html.escape(importance)}</p>"}
<h2>Where each trial ends, and what to try next (schedule-law forecast)</h2>
{(img("forecast", "Forecast final objective per trial and for the best untried configs") + "<pre>"
  + html.escape(render_forecast(forecast)) + "</pre>") if isinstance(forecast, SweepForecast)
 else f"<p>{html.escape(forecast)}</p>"}
<h2>Downstream tasks vs pre-training loss</h2>
<pre>{html.escape(render_table(analysis["rows"]))}</pre>
{img("tasks", "Task metric vs L_down with the fitted threshold (the loss below which the task leaves chance)")}
<details><summary>Analysis as JSON</summary><pre>{html.escape(json.dumps(analysis["rows"], indent=1))}</pre></details>
{script}
</body></html>
"""
