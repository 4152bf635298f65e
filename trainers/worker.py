"""Where a run's attempt starts, on either of the two ways a trial runs, and what it leaves on disk.

- Multi-worker runs (sweep trials and `rewarm train`): `train_worker`, the Ray Train worker function
  (DDP or FSDP over a worker group). Checkpoints are written straight into the run dir, which
  is Ray Train's own run directory on shared storage, and reported without an upload; Ray
  Train keeps the newest and hands the latest back on a retry.
- Single-worker runs: `train_in_process`, the same attempt in the calling process (a sweep's
  Tune trial, or `rewarm train`'s Ray task), with checkpoints written straight into the run dir.

Both load the model, resume from the newest checkpoint that verifies, run the one loop
(`trainers/loop.py`) and leave the same run dir: curves.jsonl, reports.jsonl,
attempts.jsonl, placement/ and checkpoint_<time>/ directories (trainers/run_dir.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from trainers import ray_compat
from trainers.checkpoint import newest_good_checkpoint
from trainers.checkpoint_files import CheckpointError
from trainers.config import TrialConfig
from trainers.loop import Trainer, load_model
from trainers.objective import BaseReference
from trainers.run_dir import ATTEMPTS_FILE, CURVES_FILE, PLACEMENT_DIR, REPORTS_FILE, CurveLog, list_checkpoints

KEEP_CHECKPOINTS = 2  # per run: the latest to resume from, and the one before in case it is corrupt


class RunReporter:
    """What every report point leaves behind, whoever carries it to Tune.

    Rank 0 appends the step records and the report point to the run dir (the driver logs
    MLflow from these files), and one line per attempt to attempts.jsonl. Subclasses say
    where checkpoints are written and how the report travels.
    """

    def __init__(self, rank: int, run_dir: Path | None, timings: dict[str, float]):
        self.rank, self.run_dir, self.timings = rank, run_dir, timings
        self.curve_log = CurveLog(run_dir / CURVES_FILE) if run_dir else None
        self.report_log = CurveLog(run_dir / REPORTS_FILE) if run_dir else None
        self._first = True

    def truncate_after(self, step: int) -> None:
        if self.rank == 0 and self.curve_log is not None:
            self.curve_log.truncate_after(step)
            self.report_log.truncate_after(step)

    def checkpoint_target(self, step: int) -> Path:
        raise NotImplementedError

    def report(self, metrics: dict, steps: list[dict], checkpoint_dir: Path | None) -> None:
        if self.rank == 0 and self.curve_log is not None:
            self.curve_log.append(steps)
            # Ray keeps only checkpointed metrics in its Result; the driver reads these.
            self.report_log.append([metrics])
            if self._first:
                # One line per attempt (first start, each retry or resume): overhead breakdown.
                self.timings["first_step"] = metrics.get("time/first_step")
                with open(self.curve_log.path.with_name(ATTEMPTS_FILE), "a") as fh:
                    fh.write(json.dumps(self.timings) + "\n")
        self._first = False
        self._send(metrics, checkpoint_dir)

    def _send(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        raise NotImplementedError


class RayTrainReporter(RunReporter):
    """Ray Train workers: metrics from every rank, the checkpoint from rank 0.

    The run dir is Ray Train's run directory (storage_path/<run name>), so the checkpoint is
    already where Ray keeps checkpoints: reported with `NO_UPLOAD`, nothing is copied (a
    7B model's ~100 GB of weights and optimizer states written once, by the ranks that hold
    them). Ray keeps the newest `num_to_keep` and hands the latest back on a retry or restore.
    """

    def checkpoint_target(self, step: int) -> Path:
        return self.run_dir / ray_compat.checkpoint_dir_name()

    def _send(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD)


class InProcessReporter(RunReporter):
    """A single-worker run trained in the calling process, with no worker group: a sweep's
    Tune trial (`send` = `tune.report`) or a `rewarm train` Ray task (nothing to send).

    Checkpoints are written straight into the run dir, named as Ray Train names them, and
    the newest `keep` are kept: the same layout a Ray Train run has, so `pick_checkpoint`,
    the driver and MLflow see no difference. Tune is not told about them (it would copy each
    one into its trial dir); a retried or restored trial finds them in the run dir, as a
    Train run does.
    """

    def __init__(self, run_dir: Path, timings: dict[str, float], send=None, keep: int = KEEP_CHECKPOINTS):
        super().__init__(0, run_dir, timings)
        self.send, self.keep = send, keep

    def checkpoint_target(self, step: int) -> Path:
        return self.run_dir / ray_compat.checkpoint_dir_name()

    def _send(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            for old in list_checkpoints(self.run_dir)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        if self.send is not None:
            self.send(metrics)


# Ray settings that must hold in every Train worker, wherever it runs (sweeps/settings.py
# sends them through the job's runtime_env); recorded with the placement to show they arrived.
RECORDED_RAY_SETTINGS = (ray_compat.TRAIN_HEALTH_CHECK_INTERVAL_ENV, ray_compat.TRAIN_V2_ENABLED_ENV)


def record_placement(run_dir: Path | None, role: str) -> None:
    """Which Ray node ran this process (one file per role: rank0, rank1..., trial_driver),
    and the Ray settings it ran with.

    Written to the shared run dir so that a sweep on a multi-node cluster can show, and its
    tests assert, where trials and Train workers actually ran.
    """
    import ray

    if run_dir is None:
        return
    ctx = ray.get_runtime_context()
    record = {"role": role, "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
              "hostname": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
              "ray_settings": {key: os.environ.get(key) for key in RECORDED_RAY_SETTINGS}}
    directory = run_dir / PLACEMENT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{role}.json").write_text(json.dumps(record))


def pick_checkpoint(latest: Path | None, run_dir: Path | None, log=print) -> Path | None:
    """The newest checkpoint that verifies: Ray's latest first, then older ones in the run dir.

    A checkpoint corrupted after it was written (disk, a killed copy) must not end the run
    when an older good one exists; falling back costs only the steps in between.
    """
    found, errors = newest_good_checkpoint(latest, run_dir)
    if found is not None and errors:
        log(f"[rewarm] {errors[0]}; resuming from the older checkpoint {found}")
    if found is None and errors:
        raise CheckpointError(f"no usable checkpoint to resume from: {errors[0]}")
    return found


def run_attempt(cfg: TrialConfig, reporter: RunReporter, device: torch.device, latest: Path | None) -> None:
    """One attempt of a run on one rank: load the model, resume from the newest good
    checkpoint if there is one, run the loop. Shared by both ways a trial runs."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    record_placement(cfg.run_dir, f"rank{reporter.rank}")
    model = load_model(cfg, device)
    reporter.timings["model_loaded"] = time.time()
    resume_from = pick_checkpoint(latest, cfg.run_dir)  # verified here, once, the ranks sharing the hashing
    trainer = Trainer(cfg, model, device, reporter, resume_from=resume_from, resume_verified=True)
    reporter.truncate_after(trainer.state.step)
    reporter.timings["resumed_from_step"] = float(trainer.state.step)
    trainer.run()


def train_worker(config: dict) -> None:
    """`train_loop_per_worker` of the TorchTrainer: config = {"trial": TrialConfig as JSON}."""
    import ray.train
    import ray.train.torch

    timings = {"worker_start": time.time()}
    cfg = TrialConfig.model_validate(config["trial"])
    reporter = RayTrainReporter(ray.train.get_context().get_world_rank(), cfg.run_dir, timings)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext() as ckpt_dir:
        run_attempt(cfg, reporter, ray.train.torch.get_device(), Path(ckpt_dir) if ckpt_dir else None)
    ray_compat.wait_for_reports_collected()  # the last report must not end with the run (ray_compat says why)


def measure_base(cfg: TrialConfig, device: torch.device) -> BaseReference:
    """The base reference measured on this rank's hardware, with the run's precision and strategy
    (every rank of a worker group calls it; evaluation is sharded over them)."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    return Trainer(cfg, load_model(cfg, device), device, reporter=None).measure_base()


def base_reference_worker(config: dict) -> None:
    """`train_loop_per_worker` that measures the base reference on a worker group shaped like the
    trials' (config = {"trial": TrialConfig as JSON, "out": path}); rank 0 writes it to `out`."""
    import ray.train
    import ray.train.torch

    cfg = TrialConfig.model_validate(config["trial"])
    reference = measure_base(cfg, ray.train.torch.get_device())
    if ray.train.get_context().get_world_rank() == 0:
        write_atomically(Path(config["out"]), reference.model_dump_json())
    ray.train.report({"measured": 1})


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def train_in_process(cfg: TrialConfig, use_gpu: bool, send=None) -> None:
    """A single-worker run in this process: the same loop, reports and checkpoints as on a
    one-worker TorchTrainer, without a Train controller and worker group (~10 s per run).

    Called by a sweep's Tune trial (`send=tune.report`) and by `rewarm train`'s Ray task.
    """
    timings = {"worker_start": time.time()}
    # Ray sets CUDA_VISIBLE_DEVICES to the run's own GPU: it is cuda:0 here.
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    run_attempt(cfg, InProcessReporter(cfg.run_dir, timings, send=send), device, latest=None)
