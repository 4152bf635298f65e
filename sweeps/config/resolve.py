"""Turn a spec into what trials need: model and data on disk, the base reference, TrialConfigs.

Runs once per sweep in the driver, before Ray starts any trial, so that every trial
memory-maps the same prepared blocks and shares one base reference.
"""

from __future__ import annotations

import dataclasses
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
from trainers.schedules import ScheduleConfig, lr_array
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
    base_reference: BaseReference | None  # None only while it is being measured
    tasks: tuple = ()  # TokenizedTask per spec task, in spec order


def resolve(spec: SweepSpec, cache_dir: Path | None = None, log=print, measure_base=None) -> ResolvedSweep:
    """`measure_base(unmeasured, path) -> BaseReference` measures the base model where trials run
    and writes it to `path` (the cache); by default it is measured in this process."""
    cache_dir = cache_dir or default_cache_dir()
    toy = None
    if spec.uses_toy_model or any(s.path.startswith(TOY_DATA_PREFIX) for s in (spec.data.upstream, spec.data.downstream)):
        toy = ensure_toy_world(spec.toy_world, cache_dir, log=log)
    model_path = str(toy.model) if spec.uses_toy_model else spec.model.name_or_path
    tokenizer_path = spec.model.tokenizer or (str(toy.tokenizer) if spec.uses_toy_model else model_path)
    max_len = _checked_max_positions(model_path, spec.data.seq_len)

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
    tasks = build_tasks(spec, tokenizer_path, max_len)
    unmeasured = ResolvedSweep(spec, model_path, tokenizer_path, prepared["upstream"], prepared["downstream"], None,
                               tuple(tasks))
    key = base_reference_key(unmeasured)
    path = cache_dir / "base_reference" / f"{key}.json"
    if path.exists():
        base = BaseReference.model_validate_json(path.read_text())
    else:
        # The sweep driver passes a measurer that runs on the trials' own hardware (a CPU head
        # node must not measure a GPU model's reference in other numerics); here, this process.
        base = (measure_base or measure_here)(unmeasured, path)
    return dataclasses.replace(unmeasured, base_reference=base)


def build_tasks(spec: SweepSpec, tokenizer_path: str, max_len: int | None) -> list:
    """Load (or generate, for toy tasks) and tokenize every task of the spec; prompts keep at
    most the model's `max_len` positions with their longest choice."""
    if not spec.tasks:
        return []
    from transformers import AutoTokenizer

    from trainers.task_data import TaskError, load_task_jsonl, tokenize_task
    from trainers.toy_tasks import toy_task_examples

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
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


def _checked_max_positions(model_path: str, seq_len: int) -> int | None:
    """The model's longest sequence (None: unbounded), once `seq_len` is known to fit it."""
    from trainers import hf_compat

    try:
        limit = hf_compat.max_positions(model_path)
    except Exception as exc:  # hub/IO/JSON errors vary by cause; report the cause
        raise ResolveError(f"model.name_or_path: cannot load {model_path!r} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if limit is not None and seq_len > limit:
        raise ResolveError(f"data.seq_len: {seq_len} exceeds the model's maximum sequence length ({limit})")
    return limit


def trial_device(spec: SweepSpec) -> str:
    return "cuda" if spec.resources.gpus_per_worker > 0 else "cpu"


def base_reference_key(resolved: ResolvedSweep) -> str:
    """What the base reference depends on: the model's revision (its weight files' sizes and
    times, or the hub commit), the storage dtype, how trials compute (device, precision,
    strategy, workers), the validation blocks and the tasks."""
    spec = resolved.spec
    tasks = [[t.model_dump_json(), {x.name: x.length_normalized for x in spec.tasks}.get(t.name, False)]
             for t in resolved.tasks]
    return hashlib.sha256(json.dumps({
        "model": resolved.model_path, "revision": model_revision(resolved.model_path), "dtype": spec.model.dtype,
        "device": trial_device(spec), "parallel": spec.resources.parallel().model_dump(),
        "workers": spec.resources.workers_per_trial, "eval_batch": spec.training.eval_batch_size,
        "val": [str(resolved.upstream.val), str(resolved.downstream.val)], "tasks": tasks, "v": 2,
    }, sort_keys=True).encode()).hexdigest()[:16]


def model_revision(model_path: str) -> list | str:
    """A local model directory's weight and config files (name, size, mtime); a hub model's
    commit, as transformers resolved it."""
    local = Path(model_path)
    if local.is_dir():
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(local.iterdir())
                if p.suffix in (".safetensors", ".bin", ".json")]
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "_commit_hash", None) or "unknown"


def reference_trial_config(resolved: ResolvedSweep) -> TrialConfig:
    """A TrialConfig that measures the base model: the trials' model, data, tasks and
    parallelism; its knobs are placeholders (evaluating the base takes no step)."""
    knobs = {Knob.SCHEDULE: "constant", Knob.MAX_LR: 1e-4, Knob.WARMUP_FRAC: 0.0, Knob.REPLAY_RATIO: 0.0}
    # Gain and forgetting are against the pretrained base, also for trials trained from scratch.
    return trial_config(resolved, knobs).model_copy(update={"init": "pretrained"})


def measure_here(resolved: ResolvedSweep, path: Path) -> BaseReference:
    """The base reference measured in this process, on its GPU if it has one (tests, tools)."""
    import torch

    from trainers.worker import measure_base, write_atomically

    cfg = reference_trial_config(resolved)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    same_numerics = device.type == trial_device(resolved.spec) and cfg.parallel.strategy == "ddp"
    if cfg.parallel.strategy == "fsdp":  # one process holds the whole model: measured as DDP would
        cfg = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"strategy": "ddp"})})
    reference = measure_base(cfg, device)
    if same_numerics:  # the cache key claims the trials' device and strategy: only then is it theirs
        write_atomically(path, reference.model_dump_json())
    return reference


def schedule_config(spec: SweepSpec, knobs: dict) -> ScheduleConfig:
    """The LR schedule of one point of the search space (its knobs, the spec's decay shape)."""
    return ScheduleConfig(kind=knobs[Knob.SCHEDULE], max_lr=float(knobs[Knob.MAX_LR]),
                          warmup_frac=float(knobs[Knob.WARMUP_FRAC]), **spec.training.shape())


def trial_lrs(spec: SweepSpec, knobs: dict):
    """The LR of each optimizer step of a trial at these knobs, as a read-only array (what the
    schedule law reads)."""
    return lr_array(schedule_config(spec, knobs), spec.cadence().total_steps)


def trial_config(resolved: ResolvedSweep, knobs: dict, run_dir: Path | None = None) -> TrialConfig:
    """The TrialConfig for one point of the search space."""
    spec, t = resolved.spec, resolved.spec.training
    cadence = spec.cadence()
    schedule = schedule_config(spec, knobs)
    return TrialConfig(
        model_path=resolved.model_path, dtype=spec.model.dtype, parallel=spec.resources.parallel(), init=spec.model.init,
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
