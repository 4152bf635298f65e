"""`rewarm best`: rank a sweep's configs from MLflow alone (no Ray needed).

Ranking rules: completed trials first, by final objective; trials stopped early by the
scheduler after them (their objective is at fewer tokens, so not comparable); diverged
and failed trials are never ranked. `--max-forgetting E` keeps trials whose final
forgetting is at most E nats/token. `--pareto` lists the completed trials no other
completed trial beats on both gain (higher) and forgetting (lower) (`sweeps/results/pareto.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from search_spaces.knobs import KNOBS
from sweeps.results.pareto import pareto_front
from sweeps.tracking.records import spec_text_of
from sweeps.tracking.statuses import RANKED_STATUSES, TrialStatus, rank_key
from sweeps.tracking.tracker import SWEEP_TAG

COLUMNS = ("rank", "trial_id", "status", "objective", "gain", "forgetting", "L_up", "L_down", *KNOBS, "tokens")


def rank(trials: list[dict], top: int | None = None, max_forgetting: float | None = None,
         pareto: bool = False) -> list[dict]:
    pool = [t for t in trials if t["status"] in RANKED_STATUSES and "objective" in t]
    if max_forgetting is not None:
        pool = [t for t in pool if t.get("forgetting", float("inf")) <= max_forgetting]
    if pareto:
        done = [t for t in pool if t["status"] == TrialStatus.COMPLETED]
        pool = [done[i] for i in sorted(pareto_front([(t["gain"], t["forgetting"]) for t in done]))]
    pool.sort(key=lambda t: rank_key(t["status"], t["objective"]))
    ranked = [{"rank": i + 1, **t} for i, t in enumerate(pool)]
    return ranked[:top] if top else ranked


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(rows, sort_keys=False)
    if not rows:
        return "(no ranked trials)"

    signed = {"objective", "gain", "forgetting"}

    def cell(column, v):
        if isinstance(v, float):
            if column == "tokens":
                return f"{v:.0f}"
            return f"{v:+.4f}" if column in signed else f"{v:.4g}"
        return str(v)

    table = [[cell(c, r.get(c, "")) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def export_spec(client, parent, trial: dict, path: Path) -> dict:
    """Write the sweep's spec with the trial's knobs fixed: `rewarm train FILE` reruns it."""
    raw = yaml.safe_load(spec_text_of(parent))
    raw["name"] = f"{raw['name']}-{trial['trial_id']}"
    raw.setdefault("search_space", {})["params"] = {k: trial[k] for k in KNOBS}
    raw.setdefault("budget", {})["num_trials"] = 1
    path.write_text(f"# Exported by `rewarm best` from sweep {parent.data.tags.get(SWEEP_TAG)!r}, trial "
                    f"{trial['trial_id']} (objective {trial['objective']:+.4f}).\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return raw


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': storage sizes as a person reads them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
