"""Turn a spec into what trials need: model and data on disk, the base reference, TrialConfigs.

Runs once per sweep in the driver, before Ray starts any trial, so that every trial
memory-maps the same prepared blocks and shares one base reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from search_spaces.knobs import Knob
from sweeps.config.spec import SweepSpec
from trainers.config import LoopConfig, TrialConfig
from trainers.errors import UserError
from trainers.data import DataError, DataSource, PreparedDomain, prepare_domain
from trainers.objective import BaseReference
from trainers.schedules import ScheduleConfig
from trainers.toyworld import TOY, TOY_DATA_PREFIX, default_cache_dir, ensure_toy_world


class ResolveError(UserError, ValueError):
    """The spec is valid but what it points at is not usable (missing data, model too short...)."""


@dataclass(frozen=True)
class ResolvedSweep:
    spec: SweepSpec
    model_path: str
    tokenizer_path: str
    upstream: PreparedDomain
    downstream: PreparedDomain
    base_reference: BaseReference
    tasks: tuple = ()  # TokenizedTask per spec task, in spec order


def resolve(spec: SweepSpec, cache_dir: Path | None = None, log=print) -> ResolvedSweep:
    cache_dir = cache_dir or default_cache_dir()
    toy = None
    if spec.uses_toy_model or any(s.path.startswith(TOY_DATA_PREFIX) for s in (spec.data.upstream, spec.data.downstream)):
        toy = ensure_toy_world(spec.toy_world, cache_dir, log=log)
    model_path = str(toy.model) if spec.uses_toy_model else spec.model.name_or_path
    tokenizer_path = spec.model.tokenizer or (str(toy.tokenizer) if spec.uses_toy_model else model_path)
    _check_seq_len(model_path, spec.data.seq_len)

    def source(field: str) -> DataSource:
        src: DataSource = getattr(spec.data, field)
        if src.path.startswith(TOY_DATA_PREFIX):
            domain = src.path.removeprefix(TOY_DATA_PREFIX)
            if domain not in ("upstream", "downstream"):
                raise ResolveError(f"data.{field}.path: unknown toy domain {domain!r}; use toy:upstream or toy:downstream")
            return src.model_copy(update={"path": str(toy.data_path(domain))})
        return src

    prepared = {}
    for field in ("upstream", "downstream"):
        try:
            prepared[field] = prepare_domain(source(field), tokenizer_path, spec.data.seq_len,
                                             spec.data.val_fraction, spec.data.val_sequences, cache_dir)
        except DataError as exc:
            raise ResolveError(f"data.{field}: {exc}") from None
    tasks = build_tasks(spec, tokenizer_path, model_path)
    base = measure_base_reference(model_path, spec.model.dtype, prepared["upstream"], prepared["downstream"],
                                  spec.training.eval_batch_size, cache_dir, tasks,
                                  {t.name: t.length_normalized for t in spec.tasks})
    return ResolvedSweep(spec, model_path, tokenizer_path, prepared["upstream"], prepared["downstream"], base,
                         tuple(tasks))


def build_tasks(spec: SweepSpec, tokenizer_path: str, model_path: str) -> list:
    """Load (or generate, for toy tasks) and tokenize every task of the spec."""
    from transformers import AutoTokenizer

    from trainers.tasks import TaskError, load_task_jsonl, tokenize_task
    from trainers.toy_tasks import toy_task_examples

    if not spec.tasks:
        return []
    from transformers import AutoConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    max_len = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    out = []
    for i, task in enumerate(spec.tasks):
        try:
            if task.path.startswith(TOY_DATA_PREFIX):
                examples = toy_task_examples(spec.toy_world, task.path.removeprefix(TOY_DATA_PREFIX))
            else:
                examples = load_task_jsonl(task.path)
            examples = examples[:task.max_examples]
            if len(examples) < spec.resources.workers_per_trial:
                raise TaskError(f"{len(examples)} examples for {spec.resources.workers_per_trial} workers; "
                                f"every worker scores a share, so give at least one example per worker")
            out.append(tokenize_task(task.name, examples, tokenizer, max_len))
        except TaskError as exc:
            raise ResolveError(f"tasks[{i}] ({task.name}): {exc}") from None
    return out


def _check_seq_len(model_path: str, seq_len: int) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except Exception as exc:  # hub/IO errors vary by cause; report the cause
        raise ResolveError(f"model.name_or_path: cannot load {model_path!r} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ResolveError(f"data.seq_len: {seq_len} exceeds the model's maximum sequence length ({limit})")


def measure_base_reference(model_path: str, dtype: str, upstream: PreparedDomain, downstream: PreparedDomain,
                           eval_batch_size: int, cache_dir: Path, tasks: list = (),
                           length_normalized: dict | None = None) -> BaseReference:
    """L_up, L_down and task metrics of the base model on the shared sets, cached on disk."""
    length_normalized = length_normalized or {}
    task_key = [[t.model_dump_json(), length_normalized.get(t.name, False)] for t in tasks]
    key = hashlib.sha256(json.dumps([model_path, dtype, str(upstream.val), str(downstream.val), task_key])
                         .encode()).hexdigest()[:16]
    path = cache_dir / "base_reference" / f"{key}.json"
    if path.exists():
        return BaseReference.model_validate_json(path.read_text())
    import torch

    from trainers.data import load_blocks
    from trainers.evaluation import validation_loss
    from trainers.parallel import load_pretrained, precision_plan
    from trainers.tasks import evaluate_task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = precision_plan("auto", device.type)
    model = load_pretrained(model_path, dtype).to(device=device, dtype=plan.master)
    dt = plan.compute
    ref = BaseReference(
        L_up=validation_loss(model, load_blocks(upstream.val), eval_batch_size, device, dt),
        L_down=validation_loss(model, load_blocks(downstream.val), eval_batch_size, device, dt),
        tasks={t.name: {**evaluate_task(model, t, device, length_normalized.get(t.name, False), dt),
                        "chance_accuracy": t.chance_accuracy} for t in tasks},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ref.model_dump_json())
    return ref


def trial_config(resolved: ResolvedSweep, knobs: dict, run_dir: Path | None = None) -> TrialConfig:
    """The TrialConfig for one point of the search space."""
    spec, t = resolved.spec, resolved.spec.training
    cadence = spec.cadence()
    schedule = ScheduleConfig(kind=knobs[Knob.SCHEDULE], max_lr=float(knobs[Knob.MAX_LR]),
                              warmup_frac=float(knobs[Knob.WARMUP_FRAC]), **t.shape())
    return TrialConfig(
        model_path=resolved.model_path, dtype=spec.model.dtype, parallel=spec.resources.parallel(),
        upstream=resolved.upstream, downstream=resolved.downstream,
        schedule=schedule, replay_ratio=float(knobs[Knob.REPLAY_RATIO]), optimizer=t.optimizer,
        loop=LoopConfig(
            total_steps=cadence.total_steps, global_batch_size=t.global_batch_size,
            micro_batch_size=t.micro_batch_size, seq_len=spec.data.seq_len, eval_every=cadence.eval_every,
            eval_batch_size=t.eval_batch_size, checkpoint_every=cadence.checkpoint_every,
            divergence_factor=t.divergence_factor, seed=spec.seed, task_eval_every=cadence.task_eval_every,
        ),
        objective=spec.objective, base_reference=resolved.base_reference, run_dir=run_dir,
        tasks=list(resolved.tasks), length_normalized={x.name: x.length_normalized for x in spec.tasks},
        torch_threads=max(1, int(spec.resources.cpus_per_worker)) if spec.resources.gpus_per_worker == 0 else None,
    )
