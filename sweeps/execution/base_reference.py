"""The base reference measured where the trials run: their device, precision and strategy.

Gain and forgetting are differences from the base model's losses, so both sides must be
measured in the same numerics: a CPU head node evaluating a 7B model in fp32, against trials
in bf16 on GPUs, would mix the two. The measurement is a Ray task holding one worker's
CPUs/GPUs (single-worker trials) or a Ray Train worker group shaped like a trial's (several
workers, DDP or FSDP); it is cached by `sweeps/config/resolve.py: base_reference_key`. CPU
trials under DDP compute in fp32 exactly as a CPU driver does, so a driver without a GPU
measures those itself (a worker group would cost ~20 s to start and give the same numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

from sweeps.config.resolve import ResolvedSweep, measure_here, reference_trial_config, trial_device
from sweeps.config.spec import SweepSpec
from sweeps.execution.failures import raise_as_run_failure
from sweeps.execution.trial import in_process, torch_trainer
from trainers.objective import BaseReference


def _measure_task(trial_json: str, use_gpu: bool, out: str) -> None:
    import torch

    from trainers.config import TrialConfig
    from trainers.worker import measure_base, write_atomically

    cfg = TrialConfig.model_validate_json(trial_json)
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    write_atomically(Path(out), measure_base(cfg, device).model_dump_json())


def _driver_has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def on_trial_hardware(spec: SweepSpec, log=print):
    """A `measure_base` for `resolve`: measures on the cluster, as the trials will run."""

    def measure(unmeasured: ResolvedSweep, path: Path) -> BaseReference:
        try:
            return _measure(unmeasured, path)
        except Exception as exc:  # a worker's failure arrives wrapped by Ray: one line, as for a run
            raise_as_run_failure(exc, "measuring the base model on the trials' hardware")

    def _measure(unmeasured: ResolvedSweep, path: Path) -> BaseReference:
        import ray

        from trainers.worker import base_reference_worker

        res = spec.resources
        if trial_device(spec) == "cpu" and res.strategy == "ddp" and not _driver_has_gpu():
            # CPU trials compute in fp32 like this process: the same numbers, without a worker's start.
            return measure_here(unmeasured, path)
        cfg = reference_trial_config(unmeasured)
        log(f"[rewarm] measuring the base model on the trials' hardware ({res.workers_per_trial} x "
            f"{'GPU' if res.gpus_per_worker else 'CPU'} worker, {res.strategy}, precision {res.precision})")
        if in_process(spec):
            task = ray.remote(_measure_task).options(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker)
            ray.get(task.remote(cfg.model_dump_json(), res.gpus_per_worker > 0, str(path)))
        else:
            storage = path.parent / "worker_groups"
            torch_trainer(json.loads(cfg.model_dump_json()), spec, run_name=f"base-{path.stem}",  # the cache key
                          storage=str(storage), worker_fn=base_reference_worker, out=str(path)).fit()
        return BaseReference.model_validate_json(path.read_text())

    return measure
