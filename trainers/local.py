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


def free_port() -> int:
    """A TCP port free on this host now, for a process group's rendezvous (a fixed port
    collides with any other run on the machine using it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(cfg: TrialConfig, world: int, checkpoint_root: Path | None = None,
                    resume_from: Path | None = None) -> CollectingReporter:
    """The loop on `world` CPU processes (gloo), without Ray: what tests use to compare DDP,
    FSDP and one worker, and to resume across strategies. Returns rank 0's reports."""
    import json
    import tempfile

    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="rewarm-dist-")) / "rank0.json"
    start_ranks(_distributed_rank, world, (cfg.model_dump_json(), str(checkpoint_root) if checkpoint_root else None,
                                           str(resume_from) if resume_from else None, port, str(out)))
    data = json.loads(out.read_text())
    return CollectingReporter(checkpoint_root, data["reports"], data["steps"], [Path(p) for p in data["checkpoints"]])


# What every rank imports before its first step. Ranks are forked from one forkserver that
# imported these once: spawning each rank fresh re-imports torch and transformers' model code
# (~4 s of CPU a rank on 2 cores; more than the toy's whole run). The server is single-threaded
# and forks before any torch op, so no thread pool or lock is inherited mid-use, which is why
# not plain fork from a caller that may run threads (Ray, MLflow).
RANK_PRELOAD = ["trainers.local", "trainers.worker", "transformers.modeling_utils"]


def start_ranks(fn, world: int, args: tuple) -> None:
    """Run `fn(rank, world, *args)` on `world` local processes and wait for them all (an error
    in any rank is raised here). `fn` must be importable by name (a module-level function).

    Ranks get this process's working directory and sys.path, but the environment the
    forkserver had when the first call started it: what a rank needs from the caller goes
    in `args` (as the rendezvous port does), not in os.environ."""
    import multiprocessing

    import torch.multiprocessing as mp

    # Read when the forkserver starts; a running server keeps what it imported.
    multiprocessing.get_context("forkserver").set_forkserver_preload(RANK_PRELOAD)
    mp.start_processes(fn, args=(world, *args), nprocs=world, join=True, start_method="forkserver")


def _distributed_rank(rank: int, world: int, cfg_json: str, checkpoint_root: str | None,
                      resume_from: str | None, port: int, out: str) -> None:
    import gc
    import json
    import os

    import torch.distributed as dist

    from trainers.worker import pick_checkpoint

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrialConfig.model_validate_json(cfg_json)
        torch.set_num_threads(1)
        device = torch.device("cpu")
        reporter = CollectingReporter(Path(checkpoint_root) if checkpoint_root else None)
        model = load_model(cfg, device)
        found = pick_checkpoint(Path(resume_from), None) if resume_from else None
        trainer = Trainer(cfg, model, device, reporter, resume_from=found, resume_verified=True)
        trainer.run()
        if rank == 0:
            Path(out).write_text(json.dumps({"reports": reporter.reports, "steps": reporter.steps,
                                             "checkpoints": [str(p) for p in reporter.checkpoints]}))
        # Why: gloo's worker threads can still hold work of the DDP reducer / FSDP hooks; a rank
        # that tears its group down (or reaches interpreter exit) while its peer is mid-collective
        # dies with "terminate called without an active exception" (SIGABRT). Drop the wrapped
        # model first, then meet the peers, so every rank's work is done before the group goes.
        del trainer, model
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
