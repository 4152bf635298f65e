"""The fully resolved configuration of one trial, as handed to every Train worker.

The sweep driver turns a spec plus one point of the search space into a `TrialConfig`:
paths are resolved, data is prepared, the base reference is measured. Workers need
nothing else, and nothing in `trainers/` imports from `sweeps/` (data flows one way).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainers.data import PreparedDomain
from trainers.objective import BaseReference, ObjectiveConfig
from trainers.parallel_config import Init, ParallelConfig
from trainers.task_data import TokenizedTask
from trainers.schedules import ScheduleConfig


class OptimizerConfig(BaseModel):
    """AdamW settings (the LR itself comes from the schedule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay (not on biases and norms).")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")


class LoopConfig(BaseModel):
    """Batching, cadence and safety limits of the training loop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_steps: int = Field(ge=1, description="Optimizer steps of the whole run (the schedule's length).")
    global_batch_size: int = Field(ge=1, description="Sequences per optimizer step, over all workers.")
    micro_batch_size: int = Field(ge=1, description="Sequences per forward/backward on one worker.")
    seq_len: int = Field(ge=2, description="Tokens per sequence.")
    eval_every: int = Field(ge=1, description="Steps between evaluations of L_up and L_down (and reports).")
    eval_batch_size: int = Field(32, ge=1, description="Sequences per evaluation forward pass.")
    checkpoint_every: int = Field(ge=1, description="Steps between checkpoints (rounded up to an eval point).")
    task_eval_every: int | None = Field(None, ge=1, description="Steps between task evaluations (at an eval point); None: at checkpoints and at the end.")
    evaluate: bool = Field(True, description="Evaluate at report points (off only for throughput benchmarks).")
    divergence_factor: float = Field(2.0, gt=1, description="Diverged when the loss EMA exceeds this times the first step's loss.")
    save_best: bool = Field(True, description="Rank 0 keeps the weights of the best eval so far in run_dir/best_model.")
    stop_after_step: int | None = Field(None, ge=1, description="Checkpoint and stop after this many steps (to resume later).")
    seed: int = Field(0, description="Seed of the data order and RNG.")

    @model_validator(mode="after")
    def _batch_divides(self):
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        return self


class TrialConfig(BaseModel):
    """One trial: knobs, model, data, loop; everything a worker needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str = Field(description="Local path or hub name for AutoModelForCausalLM.from_pretrained.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Storage dtype of the weights as loaded; training keeps fp32 master weights unless parallel.precision is bf16-pure.")
    parallel: ParallelConfig = Field(ParallelConfig(), description="DDP or FSDP, precision, activation checkpointing.")
    init: Init = Field("pretrained", description="pretrained: continue the model; random: the same architecture from fresh weights (seeded by loop.seed), i.e. training from scratch.")
    upstream: PreparedDomain
    downstream: PreparedDomain
    schedule: ScheduleConfig
    replay_ratio: float = Field(ge=0, le=1, description="Share of every step's sequences drawn from upstream.")
    optimizer: OptimizerConfig = OptimizerConfig()
    loop: LoopConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    base_reference: BaseReference | None = Field(None, description="Base model losses; measured at step 0 when absent.")
    tasks: list[TokenizedTask] = Field(default_factory=list, description="Downstream tasks scored at task-eval points.")
    length_normalized: dict[str, bool] = Field(default_factory=dict, description="Per task: score choices per token.")
    run_dir: Path | None = Field(None, description="Where rank 0 appends the per-step curve (curves.jsonl).")
    torch_threads: int | None = Field(None, ge=1, description="Intra-op threads per worker (its CPU share).")

    def fingerprint(self) -> str:
        """Identity of the training trajectory: what a checkpoint may be resumed with.

        Excludes where things are written and when the run pauses, which may differ
        between the attempts of one run.
        """
        trajectory = self.model_dump(mode="json", exclude={"run_dir", "torch_threads", "tasks", "length_normalized"})
        trajectory["loop"].pop("stop_after_step")
        # Task scoring draws no randomness and changes no weights: which tasks are scored, and
        # when, is not part of the trajectory.
        trajectory["loop"].pop("task_eval_every")
        if self.parallel == ParallelConfig():
            trajectory.pop("parallel")  # checkpoints from before the field existed still resume
        if self.init == "pretrained":
            trajectory.pop("init")
        if trajectory.get("base_reference"):
            trajectory["base_reference"].pop("tasks", None)
        if self.objective.task is None:
            for key in ("task", "task_metric", "task_weight"):
                trajectory["objective"].pop(key)
        return hashlib.sha256(json.dumps(trajectory, sort_keys=True).encode()).hexdigest()[:16]
