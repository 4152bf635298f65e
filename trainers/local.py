"""Run the training loop in this process, without Ray (tests, benchmarks, debugging)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainers.checkpoint import scratch_checkpoint_dir
from trainers.config import TrialConfig
from trainers.loop import Trainer, load_model


@dataclass
class CollectingReporter:
    """Keeps every report in memory; checkpoints are moved under `checkpoint_root`."""

    checkpoint_root: Path | None = None
    reports: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)

    def checkpoint_target(self, step: int) -> Path:
        if self.checkpoint_root is None:  # written, then dropped: the caller keeps no checkpoints
            return scratch_checkpoint_dir()
        return self.checkpoint_root / f"step_{step:08d}"

    def report(self, metrics: dict, steps: list[dict], checkpoint_dir: Path | None) -> None:
        self.reports.append(metrics)
        self.steps.extend(steps)
        if checkpoint_dir is not None:
            if self.checkpoint_root is None:
                shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
            else:
                self.checkpoints.append(checkpoint_dir)


def run_in_process(cfg: TrialConfig, checkpoint_root: Path | None = None, resume_from: Path | None = None,
                   device: torch.device | None = None) -> CollectingReporter:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reporter = CollectingReporter(checkpoint_root)
    model = load_model(cfg, device)
    Trainer(cfg, model, device, reporter, resume_from=resume_from).run()
    return reporter
