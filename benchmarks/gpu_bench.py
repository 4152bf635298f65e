"""`make bench-gpu` (issue #14): a Pythia-410M-shaped model with random weights on one GPU, bf16
mixed precision (fp32 master weights), sequence 2048, DDP and FSDP (a process group of one), with
Rewarm's own loop and a bare PyTorch loop on the same batches: tokens/s, model FLOPs
utilisation, peak memory, and the Rewarm/bare ratio. Results: benchmarks/results/gpu.json.

MFU = 6 x parameters x tokens/s (+ attention: 12 x layers x hidden x seq per token) over the
GPU's dense bf16 peak (`--peak-tflops`, default 989 for an H100/H200 SXM). Goal: >= 40%.
Fits in 10 minutes: each configuration runs WARM + STEPS steps.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHAPE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
             vocab_size=50304, max_position_embeddings=2048)
SEQ, WARM, STEPS = 2048, 5, 20
# `--smoke`: the same code on CPU (gloo, fp32, a tiny model): what CI checks, so the script
# works the day a GPU runs it.
SMOKE_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                   vocab_size=512, max_position_embeddings=64)


def make_model_dir(root: Path) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**SHAPE))
    path = root / "pythia410m_random"
    model.save_pretrained(path)
    return path


def make_blocks(root: Path, n: int) -> Path:
    path = root / "blocks.npy"
    np.save(path, np.random.default_rng(0).integers(0, SHAPE["vocab_size"], size=(n, SEQ), dtype=np.uint16))
    return path


def flops_per_token(params: int) -> float:
    attention = 12 * SHAPE["num_hidden_layers"] * SHAPE["hidden_size"] * SEQ
    return 6 * params + attention


def rewarm_run(model_dir: Path, blocks: Path, strategy: str, micro: int, accum: int, device: torch.device,
               precision: str) -> dict:
    from trainers.config import LoopConfig, TrialConfig
    from trainers.data import PreparedDomain
    from trainers.local import CollectingReporter
    from trainers.loop import Trainer, load_model
    from trainers.objective import BaseReference
    from trainers.parallel_config import ParallelConfig
    from trainers.schedules import ScheduleConfig

    n = int(np.load(blocks, mmap_mode="r").shape[0])
    domain = PreparedDomain(train=blocks, val=blocks, train_sequences=n, val_sequences=n)
    cfg = TrialConfig(
        model_path=str(model_dir), dtype="float32", upstream=domain, downstream=domain,
        parallel=ParallelConfig(strategy=strategy, precision=precision),
        schedule=ScheduleConfig(kind="cosine", max_lr=3e-4, warmup_frac=0.01), replay_ratio=0.05,
        loop=LoopConfig(total_steps=WARM + STEPS, global_batch_size=micro * accum, micro_batch_size=micro,
                        seq_len=SEQ, eval_every=WARM + STEPS, checkpoint_every=10_000, evaluate=False,
                        save_best=False),
        base_reference=BaseReference(L_up=0.0, L_down=0.0))
    _reset_peak(device)
    model = load_model(cfg, device)
    reporter = CollectingReporter()
    Trainer(cfg, model, device, reporter).run()
    times = [s["time"] for s in reporter.steps]
    tokens = cfg.loop.global_batch_size * SEQ * (len(times) - WARM)
    params = sum(p.numel() for p in _dense_params(model))
    return {"tokens_per_s": tokens / (times[-1] - times[WARM - 1]), "peak_gib": _peak_gib(device), "parameters": params}


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _dense_params(model):
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        yield p.full_tensor() if isinstance(p, DTensor) else p


def bare_run(model_dir: Path, blocks: Path, micro: int, accum: int, device: torch.device, autocast: bool) -> dict:
    """The same model, batches, AdamW and clipping in the plainest loop: the ceiling."""
    from transformers import AutoModelForCausalLM

    _reset_peak(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = np.load(blocks, mmap_mode="r")
    times = []
    for step in range(WARM + STEPS):
        for m in range(accum):
            i = (step * accum + m) * micro % (len(data) - micro)
            ids = torch.from_numpy(np.asarray(data[i:i + micro], dtype=np.int64)).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=ids).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the Rewarm loop syncs on the loss every step too
        times.append(time.time())
    tokens = micro * accum * SEQ * STEPS
    return {"tokens_per_s": tokens / (times[-1] - times[WARM - 1]), "peak_gib": _peak_gib(device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script, measures nothing")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args()
    global SEQ, WARM, STEPS
    if args.smoke:
        SHAPE.clear()
        SHAPE.update(SMOKE_SHAPE)
        SEQ, WARM, STEPS = 64, 2, 3
        device, backend, precision = torch.device("cpu"), "gloo", "fp32"
    elif not torch.cuda.is_available():
        raise SystemExit("bench-gpu needs a CUDA GPU (this machine has none); --smoke checks the script on CPU")
    else:
        device, backend, precision = torch.device("cuda", 0), "nccl", "bf16-mixed"
        torch.backends.cuda.matmul.allow_tf32 = True
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    from trainers.local import free_port

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)  # FSDP needs a process group, even of one
    out = {"gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "none (smoke run on CPU)", "shape": SHAPE, "seq_len": SEQ, "micro_batch": args.micro,
           "accumulation": args.accum, "peak_tflops": args.peak_tflops, "precision": precision,
           "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp))
        blocks = make_blocks(Path(tmp), args.micro * args.accum * (WARM + STEPS) + args.micro)
        bare = bare_run(model_dir, blocks, args.micro, args.accum, device, autocast=precision == "bf16-mixed")
        out["bare"] = bare
        for strategy in ("ddp", "fsdp"):
            r = rewarm_run(model_dir, blocks, strategy, args.micro, args.accum, device, precision)
            r["mfu"] = r["tokens_per_s"] * flops_per_token(r["parameters"]) / (args.peak_tflops * 1e12)
            r["ratio_to_bare"] = r["tokens_per_s"] / bare["tokens_per_s"]
            out[strategy] = r
            print(f"{strategy}: {r['tokens_per_s']:.0f} tok/s, MFU {r['mfu']:.1%}, peak {r['peak_gib']} GiB, "
                  f"Rewarm/bare {r['ratio_to_bare']:.3f}", flush=True)
        bare["mfu"] = bare["tokens_per_s"] * flops_per_token(out["ddp"]["parameters"]) / (args.peak_tflops * 1e12)
    out["goal_mfu_40pct_met"] = max(out["ddp"]["mfu"], out["fsdp"]["mfu"]) >= 0.40
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
