"""`make bench`: trainer throughput (Rewarm loop vs a bare PyTorch loop) and `rewarm train` fixed cost.

Throughput: the same base model, the same packed data, the same global/micro batch and the
same AdamW + clipping, in one process. This 2-core machine's speed drifts by up to +-9%
between two consecutive identical runs of the bare loop (six in a row: 23.7k-28.3k tokens/s),
so loops timed one after the other disagree by that much whatever the protocol (alternated
whole runs gave ratios 0.86-1.02 within one bench). The loops are therefore interleaved
*step by step* in one process: the real `Trainer.run` drives the Rewarm loop, and before each
of its steps one bare step runs on the bare loop's own model, optimizer and data, timed on its
own. A Rewarm step's time is the wall time from the end of its previous step to its own end
(everything the loop does per step, its bookkeeping in `run` included) minus the bare step
that ran in between, so drift hits both loops alike. ROUNDS rounds, each with fresh models,
time steps [WARM, STEPS); the figure is the median of the per-round ratios (Rewarm tokens/s
over bare tokens/s). Evaluation and checkpoints are off (none falls inside the window).

Fixed cost: `rewarm train sweeps/specs/smoke.yaml` as a subprocess with a 4-step budget;
the breakdown comes from the timestamps the driver and rank-0 worker record.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainers.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STEPS, WARM, ROUNDS = 100, 10, 7


def _spec():
    from sweeps.config.loading import load_spec

    return load_spec(REPO / "sweeps" / "specs" / "smoke.yaml",
                     [f"budget.tokens_per_trial={STEPS * 16 * 128}"])


class BareLoop:
    """The loop a person would write by hand: no schedule, no mixer, no reports; one step per call."""

    def __init__(self, cfg, device):
        from trainers.data import load_blocks
        from trainers.loop import load_model

        self.loop, self.device = cfg.loop, device
        self.model = load_model(cfg, device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.schedule.max_lr, betas=(0.9, 0.95),
                                     weight_decay=0.1)
        self.data = load_blocks(cfg.downstream.train)
        self.rng = np.random.default_rng(0)

    def step(self) -> None:
        loop = self.loop
        rows = self.rng.integers(len(self.data), size=loop.global_batch_size)
        batch = torch.from_numpy(np.asarray(self.data[rows], dtype=np.int64))
        for micro in batch.to(self.device).split(loop.micro_batch_size):
            loss = self.model(input_ids=micro, labels=micro).loss / (loop.global_batch_size // loop.micro_batch_size)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss.item()


class InterleavedTrainer(Trainer):
    """The Rewarm loop, with one bare step run (and timed) before each of its own steps."""

    def __init__(self, *args, bare: BareLoop, **kwargs):
        super().__init__(*args, **kwargs)
        self.bare, self.bare_s, self.step_ends = bare, [], []

    def _train_step(self) -> dict:
        t0 = time.perf_counter()
        self.bare.step()
        self.bare_s.append(time.perf_counter() - t0)
        record = super()._train_step()
        self.step_ends.append(time.perf_counter())
        return record


def interleaved_round(cfg, device) -> dict:
    """One round: both loops' tokens/s over steps [WARM, STEPS), measured step by step in turn."""
    from trainers.local import CollectingReporter
    from trainers.loop import load_model

    bare = BareLoop(cfg, device)
    trainer = InterleavedTrainer(cfg, load_model(cfg, device), device, CollectingReporter(), bare=bare)
    trainer.run()
    ends, bare_s = np.array(trainer.step_ends), np.array(trainer.bare_s)
    rewarm_s = np.diff(ends)[WARM:] - bare_s[WARM + 1:]  # end of step i-1 -> end of step i, less bare step i
    tokens = cfg.loop.global_batch_size * cfg.loop.seq_len * len(rewarm_s)
    return {"rewarm_tokens_per_s": float(tokens / rewarm_s.sum()),
            "bare_tokens_per_s": float(tokens / bare_s[WARM + 1:].sum())}


def throughput() -> dict:
    from sweeps.config.resolve import resolve, trial_config

    spec = _spec()
    resolved = resolve(spec)
    cfg = trial_config(resolved, spec.fixed_knobs())
    cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={
        "evaluate": False, "eval_every": STEPS, "checkpoint_every": 10 * STEPS})})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rounds = [interleaved_round(cfg, device) for _ in range(ROUNDS)]
    rewarm = [r["rewarm_tokens_per_s"] for r in rounds]
    bare = [r["bare_tokens_per_s"] for r in rounds]
    ratios = [r / b for r, b in zip(rewarm, bare)]
    return {"protocol": "step-interleaved", "rewarm_tokens_per_s": statistics.median(rewarm),
            "bare_tokens_per_s": statistics.median(bare),
            "ratio": statistics.median(ratios), "round_ratios": ratios,
            "rewarm_runs": rewarm, "bare_runs": bare, "rounds": ROUNDS, "steps_per_run": STEPS,
            "timed_steps": STEPS - 1 - WARM,
            "global_batch": cfg.loop.global_batch_size, "micro_batch": cfg.loop.micro_batch_size,
            "seq_len": cfg.loop.seq_len, "device": device.type, "torch_threads": torch.get_num_threads()}


def fixed_cost() -> dict:
    rewarm = Path(sys.executable).with_name("rewarm")
    with tempfile.TemporaryDirectory() as tmp:
        launch = time.time()
        proc = subprocess.run(
            [str(rewarm), "train", str(REPO / "sweeps" / "specs" / "smoke.yaml"), "--run-name", "bench",
             "--set", "budget.tokens_per_trial=8192", "--set", f"storage_path={tmp}/runs"],
            capture_output=True, text=True, cwd=tmp, env={**os.environ, "RAY_ADDRESS": ""})
        if proc.returncode:
            raise SystemExit(f"rewarm train failed: {proc.stderr[-2000:]}")
        t = json.loads((Path(tmp) / "runs" / "bench" / "summary.json").read_text())["timings"]
    return {
        "total_to_first_step_s": t["first_step"] - launch,
        "breakdown_s": {
            "cli_start_and_imports": t["start"] - launch,
            "ray_start": t["ray_ready"] - t["start"],
            "resolve_spec_data_base_reference": t["resolved"] - t["ray_ready"],
            "trainer_setup_to_worker_start": t["worker_start"] - t["fit_start"],
            "model_load_and_prepare": t["model_loaded"] - t["worker_start"],
            "first_step": t["first_step"] - t["model_loaded"],
        },
        "after_last_step_to_exit_s": time.time() - t["end"],
    }


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {**throughput(), "fixed_cost": fixed_cost(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": {"cpus": os.cpu_count()}}
    (RESULTS / "trainer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"trainer throughput: rewarm {result['rewarm_tokens_per_s']:.0f} tok/s, bare {result['bare_tokens_per_s']:.0f} "
          f"tok/s, ratio {result['ratio']:.3f} (goal >= 0.95, eval off)")
    fc = result["fixed_cost"]
    print(f"rewarm train fixed cost to first step: {fc['total_to_first_step_s']:.1f} s")
    for k, v in fc["breakdown_s"].items():
        print(f"  {k:36s} {v:6.2f} s")
    print(f"results: {RESULTS / 'trainer.json'}")


if __name__ == "__main__":
    main()
