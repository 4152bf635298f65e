"""`make bench-scale`: what the scale path costs on CPU (issue #14), written to results/scale.json.

Each case runs in a fresh Python process, so its peak resident memory (`ru_maxrss`) is its own:
1. **Data preparation** of generated corpora of two sizes (>= 50M tokens): the driver's peak
   memory and wall time of `prepare_domain` (datasets.map over 2 processes, then packing).
   The driver's peak must not grow with the corpus.
2. **Evaluation memory**: `validation_loss` (head applied in chunks) vs the plain full-logits
   loss, on a Pythia-14M-shaped model (vocabulary 50,304) at sequence 2048, batch 4.
3. **Checkpoints** of a Pythia-410M-shaped model (random weights) with AdamW states on CPU:
   size, write time, one verification (sha256 of every file), load time; whole-model (DDP,
   rank 0 writes) and sharded (FSDP on 2 gloo processes, each rank writes and hashes its shard).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CORPUS_TOKENS = (50_000_000, 100_000_000)
PYTHIA_14M = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512)
PYTHIA_410M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


def _child(case: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale_bench", "--case", case, *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _AnonPeak:
    """Peak anonymous resident memory (heap, tensors: what the process itself holds), sampled
    every 20 ms. `ru_maxrss` also counts the pages of memory-mapped files the process touched
    (the Arrow cache it reads, the .npy it writes): page cache the kernel drops under pressure,
    which grows with the corpus without being held; both are reported."""

    def __init__(self):
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.02)

    def sample(self):
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop_mib(self) -> float:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak_kib / 1024


_SAMPLER = None


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peaks() -> dict:
    return {"peak_anon_mib": _SAMPLER.stop_mib(), "peak_rss_mib": _peak_mib()}


def _gpt_neox(vocab: int, **shape):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch_seed()
    config = GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=2048, **shape)
    return GPTNeoXForCausalLM(config)


def torch_seed():
    import torch

    torch.manual_seed(0)


def write_corpus(path: Path, tokens: int) -> int:
    """Toy-world documents repeated (each with a running number) until about `tokens` tokens;
    written line by line, so the generator holds one document at a time."""
    from transformers import AutoTokenizer

    from trainers.toyworld import ToyWorldConfig, ensure_toy_world

    world = ensure_toy_world(ToyWorldConfig())
    docs = [json.loads(line)["text"] for line in world.downstream.read_text().splitlines()[:2000]]
    tok = AutoTokenizer.from_pretrained(world.tokenizer)
    per_doc = sum(len(tok(d)["input_ids"]) + 1 for d in docs[:200]) / 200
    n_docs = int(tokens / per_doc)
    with open(path, "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"text": f"{i} {docs[i % len(docs)]}"}) + "\n")
    return n_docs


def case_prepare(corpus: str, cache: str) -> dict:
    from trainers.data import DataSource, prepare_domain
    from trainers.toyworld import ToyWorldConfig, ensure_toy_world

    world = ensure_toy_world(ToyWorldConfig())
    start = time.perf_counter()
    prepared = prepare_domain(DataSource(path=corpus), world.tokenizer, 256, 0.01, 64, Path(cache), num_proc=2)
    return {"seconds": time.perf_counter() - start, **_peaks(), "train_tokens": prepared.train_sequences * 256}


def case_eval(mode: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from trainers.evaluation import validation_loss

    model = _gpt_neox(50304, **PYTHIA_14M).eval()
    blocks = np.random.default_rng(0).integers(0, 50304, size=(4, 2048))
    before = _SAMPLER.peak_kib / 1024
    start = time.perf_counter()
    if mode == "chunked":
        loss = validation_loss(model, blocks, 4, torch.device("cpu"))
    else:
        with torch.no_grad():
            ids = torch.as_tensor(blocks)
            logits = model(input_ids=ids).logits
            loss = float(F.cross_entropy(logits[:, :-1].reshape(-1, 50304).float(), ids[:, 1:].reshape(-1)))
    return {"loss": loss, "seconds": time.perf_counter() - start, **_peaks(), "model_and_data_mib": before}


def case_checkpoint(directory: str) -> dict:
    import torch

    from trainers.checkpoint import capture_rng, load_checkpoint, save_checkpoint
    from trainers.checkpoint_files import TrainState, verify_checkpoint

    model = _gpt_neox(50304, **PYTHIA_410M)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 50304, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # AdamW states exist now: the checkpoint is full size
    state = TrainState(step=1, tokens_seen=16, replay={}, world_size=1)
    target = Path(directory) / "checkpoint"
    t0 = time.perf_counter()
    save_checkpoint(target, model, optimizer, state, [capture_rng()])
    t1 = time.perf_counter()
    verify_checkpoint(target)
    t2 = time.perf_counter()
    load_checkpoint(target, model, optimizer, 0, torch.device("cpu"), verified=True)
    t3 = time.perf_counter()
    size = sum(f.stat().st_size for f in target.iterdir())
    return {"parameters": params, "bytes": size, "write_s": t1 - t0, "verify_s": t2 - t1, "load_s": t3 - t2,
            "write_mib_per_s": size / 2**20 / (t1 - t0)}


def case_checkpoint_sharded(directory: str) -> dict:
    """The same model under FSDP on 2 CPU processes (gloo): each rank writes and hashes its shards."""
    from trainers.local import free_port, start_ranks

    model_dir = Path(directory) / "model410m"
    _gpt_neox(50304, **PYTHIA_410M).save_pretrained(model_dir)
    out = Path(directory) / "sharded.json"
    start_ranks(_sharded_rank, 2, (str(model_dir), directory, str(out), free_port()))
    return json.loads(out.read_text())


def _sharded_rank(rank: int, world: int, model_dir: str, directory: str, out: str, port: int) -> None:
    import torch
    import torch.distributed as dist

    from trainers.checkpoint import capture_rng, load_checkpoint, newest_good_checkpoint, save_sharded_checkpoint
    from trainers.checkpoint_files import TrainState
    from trainers.parallel import build_model
    from trainers.parallel_config import ParallelConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = build_model(model_dir, "float32", ParallelConfig(strategy="fsdp"), torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 50304, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    state = TrainState(step=1, tokens_seen=16, replay={}, world_size=world)
    target = Path(directory) / "sharded_checkpoint"
    dist.barrier()
    t0 = time.perf_counter()
    save_sharded_checkpoint(target, model, optimizer, state, [capture_rng()] * world)
    t1 = time.perf_counter()
    found, _ = newest_good_checkpoint(target, None)  # the ranks share the hashing
    t2 = time.perf_counter()
    load_checkpoint(found, model, optimizer, rank, torch.device("cpu"), verified=True)
    t3 = time.perf_counter()
    if rank == 0:
        files = [f for f in target.rglob("*") if f.is_file()]
        Path(out).write_text(json.dumps({
            "ranks": world, "bytes": sum(f.stat().st_size for f in files),
            "bytes_per_rank_file": sorted(f.stat().st_size for f in files if f.suffix == ".distcp"),
            "write_s": t1 - t0, "verify_s": t2 - t1, "load_s": t3 - t2}))
    dist.destroy_process_group()


def main() -> None:
    out = {"machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="rewarm-scale-") as tmp:
        tmp = Path(tmp)
        data = []
        for tokens in CORPUS_TOKENS:
            corpus = tmp / f"corpus_{tokens}.jsonl"
            n_docs = write_corpus(corpus, tokens)
            result = _child("prepare", str(corpus), str(tmp / f"cache_{tokens}"))
            data.append({"target_tokens": tokens, "documents": n_docs, "corpus_mib": corpus.stat().st_size / 2**20,
                         **result})
            corpus.unlink()
            print(f"prepare {tokens / 1e6:.0f}M tokens: {result['seconds']:.1f} s, driver peak anon "
                  f"{result['peak_anon_mib']:.0f} MiB (RSS with mapped files {result['peak_rss_mib']:.0f} MiB)", flush=True)
        out["data_preparation"] = data
        out["evaluation"] = {mode: _child("eval", mode) for mode in ("chunked", "full_logits")}
        for mode, r in out["evaluation"].items():
            print(f"eval {mode}: peak anon {r['peak_anon_mib']:.0f} MiB (model and data {r['model_and_data_mib']:.0f}), "
                  f"loss {r['loss']:.5f}", flush=True)
        out["checkpoint_410m"] = {"ddp_whole": _child("checkpoint", str(tmp)),
                                  "fsdp_sharded_2_ranks": _child("checkpoint_sharded", str(tmp))}
        for kind, c in out["checkpoint_410m"].items():
            print(f"checkpoint 410M {kind}: {c['bytes'] / 2**30:.2f} GiB, write {c['write_s']:.1f} s, verify "
                  f"{c['verify_s']:.1f} s, load {c['load_s']:.1f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        _SAMPLER = _AnonPeak()
        case, args = sys.argv[2], sys.argv[3:]
        result = {"prepare": case_prepare, "eval": case_eval, "checkpoint": case_checkpoint,
                  "checkpoint_sharded": case_checkpoint_sharded}[case](*args)
        print(json.dumps(result))
    else:
        main()
