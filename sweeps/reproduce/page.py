"""The reproduce report: report.html (the findings table and the figures beside it) and
findings.md (the same table, for the README)."""

from __future__ import annotations

import html
from pathlib import Path

from sweeps.reproduce.findings import Finding

PAPER_TITLES = {
    "world": "The embedded world",
    "gupta2023": "Gupta et al. 2023, Continual Pre-Training of Large Language Models: How to (re)warm your model? (arXiv 2308.04014)",
    "ibrahim2024": "Ibrahim et al. 2024, Simple and Scalable Strategies to Continually Pre-train Large Language Models (arXiv 2403.08763)",
    "du2024": "Du et al. 2024, Understanding Emergent Abilities of Language Models from the Loss Perspective (arXiv 2403.15796)",
}


def verdict(f: Finding) -> str:
    return "not run" if f.holds is None else ("holds" if f.holds else "does not hold")


def markdown_table(findings: list[Finding]) -> str:
    rows = ["| paper | finding (the paper's statement) | measured | verdict |", "|---|---|---|---|"]
    for f in findings:
        rows.append(f"| {f.paper} | {f.statement} | {f.summary} | **{verdict(f)}** |")
    return "\n".join(rows) + "\n"


def _times(meta: dict) -> str:
    return (f"the sweeps ran {meta['sweeps_wall_s']:.0f} s (their MLflow parent runs, start to end), "
            f"this invocation {meta['wall_s']:.0f} s")


def write_page(out_dir: Path, meta: dict, findings: list[Finding]) -> None:
    (out_dir / "findings.md").write_text(
        f"`rewarm reproduce {meta['paper']}`: {meta['trials']} trials of {meta['tokens_per_trial']} tokens; "
        f"{_times(meta)}.\n\n" + markdown_table(findings))
    held = sum(f.holds is True for f in findings)
    parts = [f"<h1>rewarm reproduce {html.escape(meta['paper'])}</h1>",
             f"<p>{held} of {len(findings)} findings hold. {meta['trials']} trials of {meta['tokens_per_trial']} tokens "
             f"({html.escape(_times(meta))}); sweeps (in MLflow): {html.escape(', '.join(meta['sweeps'].values()))}.</p>",
             "<ul>" + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(d)}</li>" for n, d in meta["experiments"].items())
             + "</ul>"]
    for paper in dict.fromkeys(f.paper for f in findings):
        parts.append(f"<h2>{html.escape(PAPER_TITLES.get(paper, paper))}</h2>")
        parts.append("<table border=1 cellpadding=4 style='border-collapse:collapse'><tr><th>the paper says</th>"
                     "<th>tested here as</th><th>measured</th><th>verdict</th></tr>")
        shown = []
        for f in (f for f in findings if f.paper == paper):
            color = {"holds": "#d4f4d4", "does not hold": "#f8d4d4"}.get(verdict(f), "#eee")
            parts.append(f"<tr><td>{html.escape(f.statement)}</td><td>{html.escape(f.check)}</td>"
                         f"<td>{html.escape(f.summary)}</td><td style='background:{color}'><b>{verdict(f)}</b></td></tr>")
            if f.figure and f.figure not in shown and (out_dir / f.figure).exists():
                shown.append(f.figure)
        parts.append("</table>")
        parts += [f"<p><img src='{html.escape(fig)}' style='max-width:100%'></p>" for fig in shown]
    (out_dir / "report.html").write_text("<!doctype html><meta charset=utf-8><title>rewarm reproduce</title>"
                                         "<body style='font-family:sans-serif;max-width:1200px'>" + "\n".join(parts))
