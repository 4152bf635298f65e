"""`make bench`: trainer throughput (Rewarm loop vs a bare PyTorch loop) and `rewarm train` fixed cost.

Throughput: the same base model, the same packed data, the same global/micro batch and
the same AdamW + clipping, in one process. The protocol is built to be steady on a shared
2-core machine: ROUNDS paired rounds, each timing both loops over STEPS - WARM steps (about
8 s each), with the order alternating between rounds (bare first, then Rewarm first) so that
drift hits both; the figure is the median of the per-round ratios. Evaluation is off for the
Rewarm loop. Tokens/s is wall-clock over steps [WARM, STEPS) of each run, from step end times.

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

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STEPS, WARM, ROUNDS = 100, 10, 7


def _spec():
    from sweeps.config.loading import load_spec

    return load_spec(REPO / "sweeps" / "specs" / "smoke.yaml",
                     [f"budget.tokens_per_trial={STEPS * 16 * 128}"])


def _tokens_per_s(times: list[float], tokens_per_step: int) -> float:
    return (len(times) - 1 - WARM) * tokens_per_step / (times[-1] - times[WARM])


def bare_loop(cfg, device) -> float:
    """The loop a person would write by hand: no schedule, no mixer, no reports."""
    from trainers.data import load_blocks
    from trainers.loop import load_model

    model = load_model(cfg, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.schedule.max_lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = load_blocks(cfg.downstream.train)
    rng = np.random.default_rng(0)
    loop = cfg.loop
    times = []
    for _ in range(loop.total_steps):
        batch = torch.from_numpy(np.asarray(data[rng.integers(len(data), size=loop.global_batch_size)], dtype=np.int64))
        for micro in batch.to(device).split(loop.micro_batch_size):
            loss = model(input_ids=micro, labels=micro).loss / (loop.global_batch_size // loop.micro_batch_size)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.time())
    return _tokens_per_s(times, loop.global_batch_size * loop.seq_len)


def rewarm_loop(cfg, device) -> float:
    from trainers.local import run_in_process

    run = run_in_process(cfg, device=device)
    return _tokens_per_s([s["time"] for s in run.steps], cfg.loop.global_batch_size * cfg.loop.seq_len)


def throughput() -> dict:
    from sweeps.config.resolve import resolve, trial_config

    spec = _spec()
    resolved = resolve(spec)
    cfg = trial_config(resolved, spec.fixed_knobs())
    cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={
        "evaluate": False, "eval_every": STEPS, "checkpoint_every": 10 * STEPS})})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bare, rewarm = [], []
    for i in range(ROUNDS):
        if i % 2 == 0:
            bare.append(bare_loop(cfg, device))
            rewarm.append(rewarm_loop(cfg, device))
        else:
            rewarm.append(rewarm_loop(cfg, device))
            bare.append(bare_loop(cfg, device))
    ratios = [r / b for r, b in zip(rewarm, bare)]
    return {"rewarm_tokens_per_s": statistics.median(rewarm), "bare_tokens_per_s": statistics.median(bare),
            "ratio": statistics.median(ratios), "round_ratios": ratios,
            "rewarm_runs": rewarm, "bare_runs": bare, "rounds": ROUNDS, "steps_per_run": STEPS, "timed_steps": STEPS - 1 - WARM,
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
