"""The sweep spec: one YAML file describes a sweep, and a run is a sweep with every knob fixed.

Every model has `extra="forbid"`, so a misspelt key is an error naming it, and every
field documents itself. Sections embed their components' own configs instead of copying
their fields (torchtitan's config-next-to-component): `training` is a
`trainers.schedules.ScheduleShape`, `training.optimizer` a `trainers.config.OptimizerConfig`,
`scheduler` a `sweeps.decisions.stop_rule.StopRuleSettings`, `objective` a
`trainers.objective.ObjectiveConfig`, `toy_world` a `trainers.toyworld.ToyWorldConfig`.
Sizes in steps are derived in one place (`sweeps/config/cadence.py`). Loading a file, with
overrides, is `sweeps/config/loading.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import search_spaces
from search_spaces.knobs import KNOBS, Knob
from search_spaces.params import Choice, Fixed, bounds, coerce_param
from sweeps.config.cadence import Cadence, asha_grace_tokens, trial_cadence
from sweeps.config.layout import DEFAULT_STORAGE_PATH
from sweeps.decisions.stop_rule import StopRuleSettings
from sweeps.tracking.retention import RetentionSettings
from sweeps.tracking.store import default_tracking_uri
from sweeps.tracking.study import study_storage_url
from trainers.config import OptimizerConfig
from trainers.data import DataSource
from trainers.objective import ObjectiveConfig
from trainers.parallel_config import ParallelConfig
from trainers.schedules import ScheduleShape
from trainers.toyworld import TOY, TOY_DATA_PREFIX, ToyWorldConfig

# Pre-training max LR of known base models (Pythia paper, table 7), used to scale paper
# presets; others must state `model.pretrain_max_lr`.
KNOWN_PRETRAIN_LR = {
    "pythia-14m": 1e-3, "pythia-31m": 1e-3, "pythia-70m": 1e-3, "pythia-160m": 6e-4, "pythia-410m": 3e-4,
    "pythia-1b": 3e-4, "pythia-1.4b": 2e-4, "pythia-2.8b": 1.6e-4, "pythia-6.9b": 1.2e-4, "pythia-12b": 1.2e-4,
}


def _identifier(v: str, max_len: int, names: str) -> str:
    """A name that is safe in paths and MLflow keys: letters, digits, '.', '_', '-'."""
    if not re.fullmatch(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{max_len - 1}}}", v):
        raise ValueError(f"use letters, digits, '.', '_' and '-' (it names {names})")
    return v


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Spec):
    """The base model to continue pre-training."""

    name_or_path: str = Field(TOY, description="'toy' (the embedded toy-world model), a hub name or a local directory.")
    tokenizer: str | None = Field(None, description="Tokenizer name or path; defaults to the model's.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Storage dtype of the weights as loaded; training keeps fp32 master weights (resources.precision says how it computes).")
    init: Literal["pretrained", "random"] = Field("pretrained", description="pretrained: continue the base model; random: the same architecture and tokenizer from fresh weights (seeded by `seed`), i.e. training from scratch, still measured against the pretrained base.")
    pretrain_max_lr: float | None = Field(None, gt=0, description="The model's own pre-training max LR; scales paper presets. Known for Pythia and the toy model.")


class DataSpec(_Spec):
    """Upstream (replayed) and downstream (new) data, and how they are cut into sequences."""

    upstream: DataSource = Field(DataSource(path=TOY_DATA_PREFIX + "upstream"), description="The base model's pre-training data (replay source).")
    downstream: DataSource = Field(DataSource(path=TOY_DATA_PREFIX + "downstream"), description="The new data.")
    seq_len: int = Field(128, ge=8, description="Tokens per training sequence (at most the model's max positions).")
    val_sequences: int = Field(64, ge=1, description="Held-out validation sequences per domain (same for every trial).")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="Share of documents held out for validation.")


class TaskSpec(_Spec):
    """A multiple-choice downstream task scored at task-eval points (README: "Tasks")."""

    name: str = Field(description="Name in metrics (task/<name>/accuracy) and in objective.task.")
    path: str = Field(description="A JSONL task file (prompt, choices, answer), or 'toy:next_word' / 'toy:successor_rank'.")
    length_normalized: bool = Field(False, description="Score each choice by its mean per-token log-likelihood instead of the sum.")
    max_examples: int | None = Field(None, ge=1, description="Use at most this many examples (the first ones).")

    @field_validator("name")
    @classmethod
    def _metric_safe(cls, v):
        return _identifier(v, 64, "MLflow metrics")

    @field_validator("path")
    @classmethod
    def _known_toy_task(cls, v):
        from trainers.toy_tasks import TOY_TASKS

        if v.startswith(TOY_DATA_PREFIX) and v.removeprefix(TOY_DATA_PREFIX) not in TOY_TASKS:
            raise ValueError(f"unknown toy task {v!r}; use one of {[TOY_DATA_PREFIX + t for t in TOY_TASKS]}")
        return v


class TrainingSpec(ScheduleShape):
    """Training settings shared by every trial (with the LR schedule's shape after warmup)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    global_batch_size: int = Field(16, ge=1, description="Sequences per optimizer step over all workers.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward on one worker.")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="AdamW settings.")
    eval_every_tokens: int = Field(16384, ge=1, description="Tokens between evaluations and reports (rounded to whole steps).")
    eval_batch_size: int = Field(32, ge=1, description="Sequences per evaluation forward pass.")
    checkpoint_every_tokens: int = Field(65536, ge=1, description="Tokens between checkpoints (taken at the next eval).")
    task_eval_every_tokens: int | None = Field(None, ge=1, description="Tokens between task evaluations (rounded to a multiple of the eval interval); default: at every checkpoint and at the end.")
    divergence_factor: float = Field(2.0, gt=1, description="A trial diverged when its loss EMA exceeds this times its first loss.")


class SearchSpaceSpec(_Spec):
    """Which registered space to search, with per-knob overrides (absolute values)."""

    name: str = Field("default", description=f"A registered search space: {sorted(search_spaces.REGISTRY)}.")
    params: dict[str, search_spaces.Param] = Field(default_factory=dict, description="Per-knob overrides: a value, a list (choice), or {type: uniform|loguniform|choice|fixed, ...}.")
    algorithm: Literal["tpe", "random", "grid", "nsga2"] | None = Field(None, description="How points are chosen: tpe (Optuna TPE after a random start), random, grid (every point of the choice lists exactly once; budget.num_trials must equal the grid's size), nsga2 (Pareto objective only). Default: nsga2 for a pareto objective, else tpe.")
    stopped_trials: Literal["pruned", "truncated"] = Field("truncated", description="How a trial the scheduler stopped early reaches Optuna: pruned (TPE ranks it below finished trials by its objective at the most tokens it reached; NSGA-II leaves it out of the front) or truncated (COMPLETE with its value at the stop, Ray's default; a truncated gain and forgetting look Pareto-efficient to NSGA-II). Either way its `rewarm_status` attribute says early_stopped.")

    @field_validator("name")
    @classmethod
    def _registered(cls, v):
        if v not in search_spaces.REGISTRY:
            raise ValueError(f"unknown search space {v!r}; choose one of {sorted(search_spaces.REGISTRY)}")
        return v

    @field_validator("params", mode="before")
    @classmethod
    def _shorthand(cls, v):
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of knob -> value or distribution")
        unknown = [k for k in v if k not in KNOBS]
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown}; knobs are {list(KNOBS)}")
        return {k: coerce_param(p) for k, p in v.items()}


class BudgetSpec(_Spec):
    """How much a sweep may spend."""

    num_trials: int = Field(12, ge=1, description="Trials to run.")
    max_concurrent: int = Field(1, ge=1, description="Trials running at once (capped by the cluster's CPUs / workers per trial).")
    tokens_per_trial: int = Field(262144, ge=1, description="Training tokens of a trial that is not stopped early (sets the schedule length).")


class SchedulerSpec(StopRuleSettings):
    """Early stopping of bad schedules (with the schedule-aware stopper's own settings)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    kind: Literal["rewarm", "asha", "none"] = Field("rewarm", description=(
        "'rewarm': schedule-aware stopping (per-trial warmup + recovery grace, smoothed objective at equal tokens, "
        "forecast of the final objective, divergence at once; sweeps/decisions/stop_rule.py); 'asha': Ray Tune's "
        "ASHA on tokens with one grace for all trials; 'none': every trial runs its full budget."))
    grace_tokens: int | None = Field(None, ge=1, description="'asha' only: no stop before this many tokens; default: longest warmup + recovery window.")
    recovery_frac: float = Field(0.1, ge=0, le=1, description="Recovery window after warmup, as a share of the trial's tokens.")


class ResourcesSpec(ParallelConfig):
    """What each trial gets, and how its workers hold the model (strategy, precision: the
    fields of trainers/parallel_config.py's ParallelConfig, declared there)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers (DDP or FSDP ranks) per trial.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0 = CPU training).")
    max_failures: int = Field(1, ge=0, description="Train worker-group restarts from the latest checkpoint before a trial fails.")

    @model_validator(mode="after")
    def _fsdp_has_workers(self):
        if self.strategy == "fsdp" and self.workers_per_trial < 2:
            raise ValueError("strategy 'fsdp' shards the model over workers_per_trial >= 2 workers; "
                             "with one worker use strategy 'ddp' (it holds the whole model either way)")
        return self

    def parallel(self) -> ParallelConfig:
        return ParallelConfig(**{name: getattr(self, name) for name in ParallelConfig.model_fields})


class TrackingSpec(_Spec):
    """Where MLflow records the sweep. MLFLOW_TRACKING_URI in the environment wins."""

    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<cwd>/mlflow.db (absolute).")
    study_storage: str | None = Field(None, description="SQLAlchemy URL of the Optuna study's database; default: optuna.db beside an SQLite MLflow store, MLflow's own PostgreSQL database (schema 'optuna'), else <storage_path>/optuna.db (sweeps/tracking/study.py).")
    experiment: str = Field("rewarm", description="MLflow experiment name.")
    flush_timeout_s: float = Field(300, ge=0, description="At the end of a sweep, how long to wait for an unavailable tracking server before giving up (curves stay on disk).")
    log_interval_s: float = Field(10.0, ge=0, description="Seconds between two MLflow writes of one trial's curves while it runs (they wait on disk; a trial's end is logged at once). 0 logs every report point.")


class SweepSpec(_Spec):
    """A whole sweep (or, with every knob fixed, one run)."""

    name: str = Field(description="Sweep name: the MLflow parent run and the results directory use it.")
    seed: int = Field(0, description="Seed of the searcher, data order and model RNG.")
    model: ModelSpec = Field(ModelSpec(), description="Base model.")
    toy_world: ToyWorldConfig = Field(ToyWorldConfig(), description="The embedded toy world (used where model or data say 'toy').")
    data: DataSpec = Field(DataSpec(), description="Upstream and downstream data.")
    training: TrainingSpec = Field(TrainingSpec(), description="Fixed training settings.")
    search_space: SearchSpaceSpec = Field(SearchSpaceSpec(), description="Knobs to search or fix.")
    objective: ObjectiveConfig = Field(ObjectiveConfig(), description="What the sweep maximises.")
    budget: BudgetSpec = Field(BudgetSpec(), description="Trials and tokens.")
    scheduler: SchedulerSpec = Field(SchedulerSpec(), description="Early stopping.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="Workers and devices per trial.")
    tracking: TrackingSpec = Field(TrackingSpec(), description="MLflow.")
    tasks: list[TaskSpec] = Field(default_factory=list, description="Downstream multiple-choice tasks to score during training.")
    retention: RetentionSettings = Field(RetentionSettings(), description="Which checkpoints the sweep keeps (sweeps/tracking/retention.py).")
    storage_path: str = Field(DEFAULT_STORAGE_PATH, description="Checkpoints and Ray results: a path every Ray node mounts (relative paths are under the working directory).")

    @field_validator("storage_path")
    @classmethod
    def _local_or_mounted(cls, v):
        # The sweep driver reads trials' curves from this path and Ray Train writes checkpoints
        # to it from every node, so it must be one filesystem path that all nodes mount.
        if "://" in v:
            raise ValueError(f"{v!r}: URIs are not supported; mount the bucket or share (NFS, EFS, GCS FUSE) at "
                             f"the same path on every node and give that path (see infra/README.md)")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        return _identifier(v, 100, "directories and runs")

    @model_validator(mode="after")
    def _consistent(self):
        t = self.training
        if t.global_batch_size % (t.micro_batch_size * self.resources.workers_per_trial):
            raise ValueError(
                f"training.global_batch_size ({t.global_batch_size}) must be a multiple of "
                f"training.micro_batch_size x resources.workers_per_trial "
                f"({t.micro_batch_size} x {self.resources.workers_per_trial})")
        self._check_search_algorithm()
        if self.steps_per_trial < 1:
            raise ValueError(f"budget.tokens_per_trial ({self.budget.tokens_per_trial}) is less than one step "
                             f"({self.tokens_per_step} tokens)")
        if self.uses_toy_model and self.data.seq_len > self.toy_world.max_positions:
            raise ValueError(f"data.seq_len ({self.data.seq_len}) exceeds the model's maximum "
                             f"sequence length ({self.toy_world.max_positions})")
        if self.scheduler.grace_tokens is not None and self.scheduler.kind != "asha":
            raise ValueError(f"scheduler.grace_tokens applies to kind 'asha' only (kind is {self.scheduler.kind!r}; "
                             f"'rewarm' sizes each trial's grace from its own warmup and scheduler.recovery_frac)")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: task names must be unique (got {names})")
        if self.objective.task is not None and self.objective.task not in names:
            raise ValueError(f"objective.task {self.objective.task!r} is not one of the spec's tasks {names}")
        if (self.scheduler.kind == "rewarm" and self.scheduler.forecast and self.scheduler.forecaster == "law"
                and self.objective.task is not None):
            raise ValueError("scheduler.forecaster 'law' forecasts losses, and objective.task adds a task metric it "
                             "cannot forecast: use scheduler.forecaster 'linear' with a task in the objective")
        self.pretrain_lr()  # raises naming model.pretrain_max_lr when it cannot be known
        try:
            self.knob_params()
        except (ValueError, KeyError) as exc:
            raise ValueError(f"search_space.params.{exc}") from None
        return self

    # ---------------------------------------------------------------- derived

    @property
    def uses_toy_model(self) -> bool:
        return self.model.name_or_path == TOY

    def cadence(self) -> Cadence:
        """Steps, tokens and intervals of every trial (sweeps/config/cadence.py)."""
        t = self.training
        return trial_cadence(t.global_batch_size, self.data.seq_len, self.budget.tokens_per_trial,
                             t.eval_every_tokens, t.checkpoint_every_tokens, t.task_eval_every_tokens,
                             self.scheduler.recovery_frac)

    def asha_grace_tokens(self, params: dict) -> int:
        """ASHA's grace: `scheduler.grace_tokens`, else the longest warmup of the space + recovery."""
        if self.scheduler.grace_tokens is not None:
            return self.scheduler.grace_tokens
        max_warmup = (bounds(params[Knob.WARMUP_FRAC]) or (0.0, 0.0))[1]
        return asha_grace_tokens(self.cadence(), max_warmup, self.scheduler.recovery_frac, self.budget.tokens_per_trial)

    @property
    def tokens_per_step(self) -> int:
        return self.cadence().tokens_per_step

    @property
    def steps_per_trial(self) -> int:
        return self.cadence().total_steps

    def pretrain_lr(self) -> float:
        if self.model.pretrain_max_lr is not None:
            return self.model.pretrain_max_lr
        if self.uses_toy_model:
            return self.toy_world.pretrain_lr
        key = self.model.name_or_path.rstrip("/").split("/")[-1].lower().removesuffix("-deduped")
        if key in KNOWN_PRETRAIN_LR:
            return KNOWN_PRETRAIN_LR[key]
        raise ValueError(f"model.pretrain_max_lr is needed for {self.model.name_or_path!r} "
                         f"(known: toy and Pythia) to scale the search space's learning rates")

    def search_algorithm(self) -> str:
        return self.search_space.algorithm or ("nsga2" if self.objective.kind == "pareto" else "tpe")

    def grid_points(self) -> int:
        """Points of the grid: the product of the choice lists' lengths (fixed knobs count once)."""
        size = 1
        for p in self.knob_params().values():
            size *= len(p.values) if isinstance(p, Choice) else 1
        return size

    def _check_search_algorithm(self) -> None:
        algorithm = self.search_algorithm()
        if algorithm == "nsga2" and self.objective.kind != "pareto":
            raise ValueError("search_space.algorithm: nsga2 searches a Pareto front; use it with objective.kind: pareto")
        if algorithm != "grid":
            return
        params = self.knob_params()
        for knob, p in params.items():
            if not isinstance(p, (Fixed, Choice)):
                raise ValueError(f"search_space.params.{knob}: a grid needs a value or a list of values, not "
                                 f"{p.describe()} (continuous); give a list, or use algorithm tpe or random")
        points = self.grid_points()
        if self.budget.num_trials != points:
            sizes = " x ".join(f"{len(p.values)} {k}" for k, p in params.items() if isinstance(p, Choice))
            raise ValueError(f"budget.num_trials ({self.budget.num_trials}) must equal the grid's size "
                             f"({sizes or '1 point'} = {points}): a grid runs every point exactly once")

    def knob_params(self) -> dict:
        space = search_spaces.get(self.search_space.name)
        return space.resolved(self.pretrain_lr(), self.search_space.params)

    def fixed_knobs(self) -> dict | None:
        """Knob values if every knob is fixed (a single run), else None."""
        params = self.knob_params()
        if all(isinstance(p, Fixed) for p in params.values()):
            return {k: p.value for k, p in params.items()}
        return None

    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI, else the spec's URI, else an absolute SQLite file in the cwd."""
        return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(self.tracking.uri)

    def mlflow_params(self) -> dict:
        """Fixed settings of every trial, flattened (`training.global_batch_size`...) for MLflow params."""
        raw = self.model_dump(mode="json", exclude={"search_space", "tracking", "name"})

        def walk(prefix, node, out):
            for k, v in node.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(key + ".", v, out)
                else:
                    out[key] = v
            return out

        return walk("", raw, {})

    def study_storage_url(self) -> str:
        """Where the sweep's Optuna study lives (sweeps/tracking/study.py has the rule)."""
        return study_storage_url(self.tracking_uri(), self.tracking.study_storage, self.storage_dir())

    def storage_dir(self) -> str:
        return str(Path(self.storage_path).expanduser().resolve())

    def anchored(self) -> SweepSpec:
        """This spec with its places made absolute: resolved once, when a sweep starts.

        `spec.yaml` keeps the anchored spec, so `rewarm resume` from any working directory finds
        the same sweep directory and the same default MLflow store instead of new, empty ones.
        A tracking URI that comes from MLFLOW_TRACKING_URI stays out of the file (it may hold
        credentials); resuming needs the same variable again.
        """
        tracking = self.tracking
        if tracking.uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            tracking = tracking.model_copy(update={"uri": default_tracking_uri()})
        model = self.model.model_copy(update={"name_or_path": _local_absolute(self.model.name_or_path),
                                              "tokenizer": self.model.tokenizer and _local_absolute(self.model.tokenizer)})
        data = self.data.model_copy(update={
            side: getattr(self.data, side).model_copy(update={"path": _local_absolute(getattr(self.data, side).path)})
            for side in ("upstream", "downstream")})
        tasks = [t.model_copy(update={"path": _local_absolute(t.path)}) for t in self.tasks]
        return self.model_copy(update={"storage_path": self.storage_dir(), "tracking": tracking, "model": model,
                                       "data": data, "tasks": tasks})


def _local_absolute(path: str) -> str:
    """A relative path that names a local file or directory, made absolute; anything else (a hub
    name, 'toy', 'toy:upstream') unchanged."""
    local = Path(path).expanduser()
    return str(local.resolve()) if not local.is_absolute() and local.exists() else path
