"""The one training loop: continued pre-training with a re-warmed schedule and replay.

It runs the same way inside a Ray Train worker (DDP or FSDP, reports through Ray) and in a
plain process (tests, benchmarks): everything outside the loop goes through a
`Reporter`. At every report point all ranks call `reporter.report`, which is what Ray
Train requires. Rank 0 writes whole-model checkpoints; under FSDP every rank writes its shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from trainers import distributed as dist_utils
from trainers import system_metrics
from trainers.checkpoint import capture_rng, load_checkpoint, save_checkpoint, save_sharded_checkpoint
from trainers.checkpoint_files import CheckpointError, TrainState
from trainers.config import TrialConfig
from trainers.data import load_blocks
from trainers.evaluation import autocast, validation_loss
from trainers.parallel import STORAGE_DTYPES, bare, build_model, is_sharded, precision_plan
from trainers.objective import BaseReference, score
from trainers.tasks import evaluate_task
from trainers.replay import ReplayMixer, stream_positions
from trainers.report_point import DIVERGED_OBJECTIVE, ReportPoint, RunStatus
from trainers.run_dir import BEST_MODEL_DIR, PARTIAL_SUFFIX
from trainers.schedules import lr_at, warmup_steps

_EMA_ALPHA = 0.1


class Reporter(Protocol):
    def checkpoint_target(self, step: int) -> Path:
        """Where rank 0 writes the checkpoint of `step` (it must not exist yet)."""

    def report(self, metrics: dict, steps: list[dict], checkpoint_dir: Path | None) -> None:
        """Called on every rank at each report point; `checkpoint_dir` only on rank 0."""


class Trainer:
    def __init__(self, cfg: TrialConfig, model: torch.nn.Module, device: torch.device,
                 reporter: Reporter, resume_from: Path | None = None, resume_verified: bool = False):
        self.cfg, self.model, self.device, self.reporter = cfg, model, device, reporter
        self.rank, self.world = dist_utils.rank_and_world()
        loop = cfg.loop
        if loop.global_batch_size % (self.world * loop.micro_batch_size):
            raise ValueError(f"global_batch_size {loop.global_batch_size} must be a multiple of "
                             f"workers x micro_batch_size = {self.world} x {loop.micro_batch_size}")
        self.per_rank = loop.global_batch_size // self.world
        self.accum = self.per_rank // loop.micro_batch_size
        self.sharded = is_sharded(model)
        # Under FSDP the mixed-precision policy casts weights in flight; under DDP autocast does.
        self.autocast_dtype = None if self.sharded else precision_plan(cfg.parallel.precision, device.type).compute
        self.optimizer = _adamw(model, cfg)
        self.val_up = load_blocks(cfg.upstream.val)
        self.val_down = load_blocks(cfg.downstream.val)

        # Every RNG, not only torch's: a process may have run another trial before this one
        # (Tune reuses trial processes), and a resumed run restores all of them below.
        seed_everything(loop.seed + self.rank)
        state = TrainState(step=0, tokens_seen=0, replay={}, config_fingerprint=cfg.fingerprint(),
                           world_size=self.world)
        if resume_from is not None:
            state = load_checkpoint(resume_from, model, self.optimizer, self.rank, device, verified=resume_verified)
            if state.config_fingerprint != cfg.fingerprint():
                raise CheckpointError(
                    f"checkpoint {resume_from} belongs to a run with a different configuration; "
                    "resume with the same spec and knobs, or start a new run name")
        self.state = state
        positions = state.stream_positions[self.rank] if state.stream_positions else {}
        self.mixer = ReplayMixer(
            downstream=self._training_blocks(cfg.downstream, positions.get("downstream")),
            upstream=self._training_blocks(cfg.upstream, positions.get("upstream")),
            batch_size=loop.global_batch_size, ratio=cfg.replay_ratio, seed=loop.seed, state=state.replay,
        )
        self.base = cfg.base_reference
        self._last_checkpoint_step = state.step
        self._pending: list[dict] = []
        self._reports_made = 0
        self.first_step_time: float | None = None  # wall clock of the first finished step (overhead bench)

    # ------------------------------------------------------------------ public

    def run(self) -> dict:
        cfg, loop = self.cfg, self.cfg.loop
        if self.base is None and loop.evaluate:
            # Nobody measured the base model for us: at step 0 the model *is* the base.
            if self.state.step != 0:
                raise ValueError("resuming needs base_reference in the config")
            self.base = self.measure_base()
        end = loop.total_steps if loop.stop_after_step is None else min(loop.total_steps, loop.stop_after_step)
        status, metrics = RunStatus.RUNNING, {}
        self.model.train()
        if self.state.step >= end:  # resumed from a run that had already reached its end
            finished = self.state.step >= loop.total_steps
            return self._report_point(RunStatus.COMPLETED if finished else RunStatus.STOPPED)
        while self.state.step < end:
            record = self._train_step()
            self._pending.append(record)
            status = self._divergence_status(record["loss"])
            step = self.state.step
            finished = step == loop.total_steps
            if status == RunStatus.DIVERGED or step % loop.eval_every == 0 or step == end:
                if status != RunStatus.DIVERGED:
                    status = (RunStatus.COMPLETED if finished
                              else RunStatus.STOPPED if step == end else RunStatus.RUNNING)
                metrics = self._report_point(status)
                if status != RunStatus.RUNNING:
                    break
        return metrics

    def _training_blocks(self, domain, position: dict | None):
        """Packed blocks, memory-mapped; or this rank's reader of a streamed domain, at `position`."""
        if domain.stream is None:
            return load_blocks(domain.train)
        from trainers.streaming import StreamBlocks

        return StreamBlocks(domain.stream, self.cfg.loop.seq_len, self.rank, self.world, position)

    def measure_base(self) -> BaseReference:
        """L_up, L_down and task metrics of the model as it is (the base, before any step), with
        this run's device, precision and strategy: what gain and forgetting are measured against."""
        return BaseReference(**self._evaluate(), tasks=self._evaluate_tasks(with_chance=True))

    # ------------------------------------------------------------------ steps

    def _train_step(self) -> dict:
        cfg, loop, s = self.cfg, self.cfg.loop, self.state
        t0 = time.perf_counter()
        lr = lr_at(s.step, cfg.schedule, loop.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        tokens, is_up = self.mixer.next_batch(rows=slice(self.rank * self.per_rank, (self.rank + 1) * self.per_rank))
        mine = torch.from_numpy(tokens).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        for micro_idx, micro in enumerate(mine.split(loop.micro_batch_size)):
            # DDP all-reduces gradients only on the last micro-batch of the step. FSDP
            # reduce-scatters after every micro-batch: skipping it would keep whole unsharded
            # gradients between micro-batches, the memory sharding exists to save.
            last = micro_idx == self.accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, autocast(self.device, self.autocast_dtype):
                loss = self.model(input_ids=micro, labels=micro).loss / self.accum
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor over the shards' norms
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dist_utils.all_reduce_mean(loss_sum)
        loss_value = loss_sum.item()
        s.step += 1
        step_tokens = loop.global_batch_size * loop.seq_len
        s.tokens_seen += step_tokens
        s.replay = self.mixer.state.model_copy()
        dt = time.perf_counter() - t0
        if self.first_step_time is None:
            self.first_step_time = time.time()
        return {"step": s.step, "tokens": s.tokens_seen, "loss": loss_value, "lr": lr,
                "grad_norm": float(grad_norm), "upstream_seqs": int(is_up.sum()),
                "tokens_per_s": step_tokens / dt, "time": time.time()}

    def _divergence_status(self, loss: float) -> str:
        s = self.state
        if not math.isfinite(loss):
            return RunStatus.DIVERGED
        if s.first_loss is None:
            s.first_loss = loss
        s.loss_ema = loss if s.loss_ema is None else (1 - _EMA_ALPHA) * s.loss_ema + _EMA_ALPHA * loss
        return RunStatus.DIVERGED if s.loss_ema > self.cfg.loop.divergence_factor * s.first_loss else RunStatus.RUNNING

    # ------------------------------------------------------------------ report points

    def _evaluate(self) -> dict[str, float]:
        bs, dt = self.cfg.loop.eval_batch_size, self.autocast_dtype
        return {"L_up": validation_loss(self.model, self.val_up, bs, self.device, dt),
                "L_down": validation_loss(self.model, self.val_down, bs, self.device, dt)}

    def _evaluate_tasks(self, with_chance: bool = False) -> dict[str, dict[str, float]]:
        out = {}
        for task in self.cfg.tasks:
            out[task.name] = evaluate_task(self.model, task, self.device,
                                           self.cfg.length_normalized.get(task.name, False), self.autocast_dtype)
            if with_chance:
                out[task.name]["chance_accuracy"] = task.chance_accuracy
        return out

    def _tasks_due(self, status: str) -> bool:
        """Tasks cost more than losses: score them at fewer points (the end, checkpoints or a cadence)."""
        cfg, s = self.cfg, self.state
        if not cfg.tasks:
            return False
        if cfg.objective.task is not None or status in (RunStatus.COMPLETED, RunStatus.STOPPED):
            return True  # a task in the objective is needed at every report point
        if cfg.loop.task_eval_every is not None:
            return s.step % cfg.loop.task_eval_every == 0
        return s.step - self._last_checkpoint_step >= cfg.loop.checkpoint_every

    def _report_point(self, status: RunStatus) -> dict:
        """Evaluate, keep the best model, checkpoint when due, and report; returns the report."""
        point = self._measure(status)
        checkpoint_dir = self._checkpoint_if_due(status)
        if self._reports_made == 0 and self.first_step_time is not None:
            point = dataclasses.replace(point, time_first_step=self.first_step_time)  # overhead breakdown
        self._reports_made += 1
        # Stamped last: report latency is worker -> scheduler (benchmarks/overhead_bench.py).
        metrics = dataclasses.replace(point, time_report=time.time()).to_result()
        steps, self._pending = self._pending, []
        self.reporter.report(metrics, steps, checkpoint_dir)
        return metrics

    def _measure(self, status: RunStatus) -> ReportPoint:
        """The report point of the current step: training stats since the last one, and evals."""
        cfg, s, pending = self.cfg, self.state, self._pending
        last = pending[-1] if pending else {
            "loss": s.loss_ema, "lr": lr_at(s.step - 1, cfg.schedule, cfg.loop.total_steps), "grad_norm": 0.0}
        point = ReportPoint(
            step=s.step, tokens=s.tokens_seen, status=status, loss=last["loss"], lr=last["lr"],
            grad_norm=last["grad_norm"],
            tokens_per_s=float(np.mean([r["tokens_per_s"] for r in pending])) if pending else 0.0,
            # The realised replay ratio over the steps since the last report point.
            replay_share=(sum(r["upstream_seqs"] for r in pending) / (len(pending) * cfg.loop.global_batch_size)
                          if pending else 0.0),
            world_size=self.world, system=system_metrics.sample(self.device) if self.rank == 0 else {},
            warmup_tokens=warmup_steps(cfg.schedule, cfg.loop.total_steps) * cfg.loop.global_batch_size * cfg.loop.seq_len)
        if status == RunStatus.DIVERGED:
            # A finite floor (not -inf) so that Optuna, ASHA and MLflow can all store it.
            return dataclasses.replace(point, objective=DIVERGED_OBJECTIVE)
        if not cfg.loop.evaluate:
            return point
        tasks = self._evaluate_tasks() if self._tasks_due(status) else {}
        scores = score(**self._evaluate(), base=self.base, cfg=cfg.objective, tasks=tasks)
        if s.best_objective is None or scores["objective"] > s.best_objective:
            s.best_objective = scores["objective"]
            if cfg.loop.save_best and cfg.run_dir is not None:
                self._save_best_model(cfg.run_dir / BEST_MODEL_DIR)
        return dataclasses.replace(point, **scores, tasks=tasks, best_objective=s.best_objective)

    def _checkpoint_if_due(self, status: RunStatus) -> Path | None:
        """Checkpoint at the end of a run and every `checkpoint_every` steps; the dir on rank 0."""
        cfg, s = self.cfg, self.state
        since = s.step - self._last_checkpoint_step
        ended = status in (RunStatus.COMPLETED, RunStatus.STOPPED)
        due = status == RunStatus.RUNNING and since >= cfg.loop.checkpoint_every
        if since <= 0 or not (ended or due):
            return None
        # All ranks take part in gathering RNG states and agree on rank 0's directory.
        rng_states = dist_utils.gather_objects(capture_rng())
        positions = dist_utils.gather_objects(stream_positions(self.mixer))
        s.stream_positions = positions if any(positions) else []
        target = dist_utils.gather_objects(self.reporter.checkpoint_target(s.step) if self.rank == 0 else None)[0]
        if self.sharded:
            save_sharded_checkpoint(target, self.model, self.optimizer, s, rng_states)
        elif self.rank == 0:
            save_checkpoint(target, self.model, self.optimizer, s, rng_states)
        self._last_checkpoint_step = s.step
        return target if self.rank == 0 else None

    def _save_best_model(self, directory: Path) -> None:
        """Weights of the best eval so far, loadable with `from_pretrained` (atomic replace).
        Called on every rank: under FSDP the whole weights are gathered (to rank 0's CPU)."""
        import shutil

        model = bare(self.model)
        # Written in the storage dtype the run was loaded in (bf16 for most hub models), not the
        # fp32 masters; None lets save_pretrained read the model's own weights, already in it.
        storage = STORAGE_DTYPES[self.cfg.dtype]
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        elif any(p.dtype != storage for p in model.parameters()):
            state_dict = model.state_dict()
        else:
            state_dict = None
        if self.rank != 0:
            return
        if state_dict is not None:
            state_dict = {k: v.to(storage) if v.is_floating_point() else v for k, v in state_dict.items()}
        tmp = directory.with_name(directory.name + PARTIAL_SUFFIX)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        (tmp / "rewarm_best.json").write_text(json.dumps({"step": self.state.step, "objective": self.state.best_objective}))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _adamw(model: torch.nn.Module, cfg: TrialConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms are not decayed)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    o = cfg.optimizer
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.schedule.max_lr, betas=(o.beta1, o.beta2), eps=o.eps,
        foreach=None,
    )


def load_model(cfg: TrialConfig, device: torch.device) -> torch.nn.Module:
    """The trial's model on this rank, laid out for its strategy and precision (trainers/parallel.py)."""
    return build_model(cfg.model_path, cfg.dtype, cfg.parallel, device, init=cfg.init, seed=cfg.loop.seed)
