"""The on-disk contract of a run directory: what workers write and the sweep driver reads.

A run's directory (`<storage>/<run name>` for `rewarm train`, `<sweep dir>/trials/<trial id>`
for a sweep's trial) lives on storage every node mounts. Rank 0 of the run appends its
curves there before they go anywhere else, so a driver that restarts, or a tracking server
that was down, loses nothing: the driver logs MLflow from these files.

    curves.jsonl       one record per optimizer step (loss, lr, grad_norm, ...)
    reports.jsonl      one ReportPoint per report point (trainers/report_point.py)
    attempts.jsonl     one line per attempt (first start, each retry or resume): timings
    placement/         <role>.json: which Ray node ran rank k / the trial driver
    checkpoint_<time>/ checkpoints (trainers/checkpoint.py), named as Ray Train names them
    best_model/        weights of the best eval so far (from_pretrained-loadable)
    decisions.jsonl    the schedule-aware stopper's decisions (written by the sweep driver)
    summary.json       `rewarm train`'s outcome (knobs, final metrics, timings)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trainers.ray_compat import CHECKPOINT_PREFIX

CURVES_FILE = "curves.jsonl"
REPORTS_FILE = "reports.jsonl"
ATTEMPTS_FILE = "attempts.jsonl"
PLACEMENT_DIR = "placement"
BEST_MODEL_DIR = "best_model"
DECISIONS_FILE = "decisions.jsonl"
SUMMARY_FILE = "summary.json"
PARTIAL_SUFFIX = ".partial"  # a directory still being written (checkpoint, best model)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run dir's checkpoint directories, oldest first (half-written `.partial` ones left out)."""
    if not run_dir.exists():
        return []
    return sorted(p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
                  if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX))


def read_jsonl(path: Path) -> list[dict]:
    """All records of a small JSON-lines file ([] when it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


class CurveLog:
    """Records appended by rank 0 as JSON lines in the run directory (one file per kind:
    per-step training records, and report-point metrics).

    On resume, records past the checkpoint's step are dropped first: they were trained
    after the checkpoint by the attempt that died and will be trained again, so the
    file ends up exactly as an uninterrupted run's.
    """

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)

    def append(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)

    def read(self) -> list[dict]:
        return read_jsonl(self.path)

    def read_new(self, cursor: "TailCursor") -> tuple[list[dict], "TailCursor"]:
        """The records appended since `cursor`, and the cursor to pass next time.

        The sweep driver calls this at every report of every trial; re-reading whole files
        would cost O(steps) per report, O(steps^2) per trial. A line still being appended is
        left for the next call. `truncate_after` replaces the file (a new inode), and then the
        reader starts over; the caller's logged-step mark skips what it already has.
        """
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return [], TailCursor()
        with fh:
            stat = os.fstat(fh.fileno())  # of the file actually opened, not of a path replaced since
            if stat.st_ino != cursor.inode or stat.st_size < cursor.offset or not _line_starts_at(fh, cursor.offset):
                # A replaced file (or one that reused the old inode number: the offset is then
                # not at a line start) is read from the top again.
                cursor = TailCursor(inode=stat.st_ino, offset=0)
            fh.seek(cursor.offset)
            data = fh.read()
        complete = data.rfind(b"\n") + 1
        records = [json.loads(line) for line in data[:complete].splitlines() if line.strip()]
        return records, TailCursor(inode=stat.st_ino, offset=cursor.offset + complete)


def _line_starts_at(fh, offset: int) -> bool:
    if offset == 0:
        return True
    fh.seek(offset - 1)
    return fh.read(1) == b"\n"


@dataclass(frozen=True)
class TailCursor:
    """Where a reader of a CurveLog stopped: the file's inode and the byte offset read up to."""

    inode: int = -1
    offset: int = 0
