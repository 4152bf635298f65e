"""One trial on Ray: the Tune function trainable, and what it asks Ray for.

A trial of one worker runs the training loop right in its Tune trial process, holding that
worker's CPUs/GPUs (no Train worker group: ~10 s less per trial on the embedded default). A
trial of several workers builds a `TorchTrainer` (DDP over a worker group) and calls
`.fit()`, with `TuneReportCallback` passing rank 0's reports to Tune; that trial's function
needs no CPU: it holds one unit of the custom resource `rewarm_trial_slot`, so all CPUs go
to Train workers. Either way the trial's run lives at `<sweep dir>/trials/<trial id>`, so a
Tune retry or `Tuner.restore` starts the same run again and it resumes from its newest good
checkpoint (exact resume), and it leaves the same files (trainers/run_dir.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from search_spaces.knobs import knob_values
from sweeps.config.layout import trials_dir
from sweeps.config.resolve import ResolvedSweep, trial_config
from sweeps.config.spec import SweepSpec
from sweeps.execution.cluster import TRIAL_SLOT
from trainers import ray_compat


def run_trial(config: dict, resolved: ResolvedSweep, sweep_dir: str) -> None:
    """The Tune function trainable: one trial = one run of the loop."""
    from ray import tune

    from trainers.worker import record_placement, train_in_process

    trial_id = tune.get_context().get_trial_id()
    run_dir = trials_dir(Path(sweep_dir)) / trial_id
    record_placement(run_dir, "trial_driver")
    cfg = trial_config(resolved, knob_values(config), run_dir=run_dir)
    if in_process(resolved.spec):
        train_in_process(cfg, use_gpu=resolved.spec.resources.gpus_per_worker > 0, send=tune.report)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = torch_trainer(json.loads(cfg.model_dump_json()), resolved.spec, run_name=trial_id,
                            storage=str(run_dir.parent), callbacks=[TuneReportCallback()])
    trainer.fit()


def in_process(spec: SweepSpec) -> bool:
    """Whether runs of this spec train in one process of their own (a sweep's Tune trial, or
    `rewarm train`'s Ray task) rather than on a Ray Train worker group.

    One worker needs no worker group: a Train controller, placement group and worker actor
    cost ~10 s per run on the embedded default (docs/ARCHITECTURE.md), most of a short trial's time.
    """
    return spec.resources.workers_per_trial == 1


def worker_resources(spec: SweepSpec) -> dict[str, float]:
    """What one worker holds, as Ray spells resources: {"CPU": n} plus {"GPU": m} with GPUs."""
    res = spec.resources
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}


def trial_resources(spec: SweepSpec) -> dict:
    """What one Tune trial asks Ray for. In-process trials hold their worker's CPUs and GPUs
    themselves; a Ray Train trial's driver holds only a trial slot (its workers hold the rest)."""
    return worker_resources(spec) if in_process(spec) else {TRIAL_SLOT: 1}


def torch_trainer(trial: dict, spec: SweepSpec, run_name: str, storage: str, callbacks=(), worker_fn=None,
                  **worker_config):
    """The TorchTrainer of one multi-worker run (a sweep's trial, or `rewarm train`; with
    `worker_fn`, another job on a worker group shaped like the trials', e.g. the base reference)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.worker import KEEP_CHECKPOINTS, train_worker

    res = spec.resources
    return ray_compat.without_idle_dataset_manager(TorchTrainer(
        train_loop_per_worker=worker_fn or train_worker,
        train_loop_config={"trial": trial, **worker_config},
        scaling_config=ScalingConfig(num_workers=res.workers_per_trial, use_gpu=res.gpus_per_worker > 0,
                                     resources_per_worker=worker_resources(spec)),
        run_config=RunConfig(name=run_name, storage_path=storage, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=res.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    ))
