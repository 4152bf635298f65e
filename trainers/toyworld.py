"""The embedded toy world: two text domains, a tokenizer and a tiny GPT-NeoX base model.

Everything is generated offline and deterministically from a seed, written once into a
cache directory and then loaded through exactly the paths a hub model and hub data
would take (`AutoTokenizer.from_pretrained`, `AutoModelForCausalLM.from_pretrained`,
`datasets.load_dataset("json", ...)`). Nothing here touches the network.

The two domains are "languages" with topics: every document picks a topic, and each
topic has its own sparse word-to-word transition table with Zipfian weights; with
probability `noise` a word is followed by a uniformly drawn word instead, because real
text is never fully predictable. The downstream language is derived from the upstream
one: each transition row is redrawn with probability `shift` (a new grammar) and a
share `new_word_frac` of the lexicon is replaced by new words made of the same
syllables (domain vocabulary the tokenizer covers but the base model never saw).
`shift=0, new_word_frac=0` gives the same distribution (re-warming on the same data).

Version 3 is built to behave like continual pre-training (issue 15): a base model
trained long enough on a large upstream corpus (2000 steps on 12000 documents) that
extra learning rate on its own data hurts, a downstream domain it is worse on by about
a nat but better on than a uniform guess, and a domain that is learned over the whole
budget rather than in the first few steps.

The default world's base-model weights ship with the project (`toyworld_weights/`, made by
`python -m trainers.toyworld ship`): pre-training them takes ~3 min on 2 cores, most of a
fresh machine's first demo or test run, and CPU kernels differ between machines, so two
machines pre-training the same config need not agree to the last bit. Shipped weights are
used only where the corpus and tokenizer just generated are byte-identical to the ones they
were pre-trained on; any other config, or a generator that drifted, pre-trains as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
TOY = "toy"  # the name a spec uses for the embedded base model
TOY_DATA_PREFIX = "toy:"  # "toy:upstream" / "toy:downstream" in a spec's data section

_UP_CONSONANTS = list("bdfgklmnprstv")
_UP_VOWELS = list("aeiou")
# Downstream's new words are built from the same syllables: the tokenizer covers them, as an
# English tokenizer covers a new English domain, yet the base model has never seen them.
_SYLLABLES = (1, 4)


class ToyWorldConfig(BaseModel):
    """How the embedded toy world is generated. Any change gives a new cache entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Seed for corpus, tokenizer and base-model pre-training.")
    shift: float = Field(
        0.4, ge=0.0, le=1.0,
        description="Distribution shift strength between upstream and downstream (0 = same data, 1 = disjoint language).",
    )
    new_word_frac: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Share of the downstream lexicon replaced by new words (domain vocabulary the base never saw).",
    )
    noise: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="Probability that a word is followed by a uniformly drawn word instead of a successor: "
                    "real text is never fully predictable, and it keeps the base model's loss on a new domain "
                    "below a uniform guess.",
    )
    vocab_words: int = Field(400, ge=20, description="Words per domain lexicon.")
    topics: int = Field(8, ge=1, description="Topics per domain; a document uses one.")
    successors: int = Field(6, ge=1, description="Likely successors per word and topic.")
    documents: int = Field(6000, ge=100, description="Downstream documents generated.")
    upstream_documents: int = Field(12000, ge=100, description="Upstream documents generated (the base model's pre-training corpus).")
    tokenizer_vocab: int = Field(512, ge=300, description="BPE vocabulary size, trained on upstream only.")
    hidden_size: int = Field(96, ge=16, description="Base model width.")
    layers: int = Field(3, ge=1, description="Base model depth.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    max_positions: int = Field(256, ge=16, description="Maximum sequence length of the base model.")
    pretrain_steps: int = Field(2000, ge=1, description="Upstream pre-training steps of the base model.")
    pretrain_lr: float = Field(1e-3, gt=0, description="Peak LR of the base model's own pre-training.")
    pretrain_seq_len: int = Field(128, ge=8, description="Sequence length of base-model pre-training.")
    pretrain_batch: int = Field(16, ge=1, description="Sequences per base-model pre-training step.")

    def fingerprint(self) -> str:
        payload = json.dumps(self.model_dump(), sort_keys=True) + _GENERATOR_VERSION
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# Bump when the generator changes in a way that alters its output.
_GENERATOR_VERSION = "v3"
# Bump when the base model's pre-training changes what it makes (`_pretrain_base_model`: its
# loop, optimizer, schedule or architecture arguments; the token packing it reads): shipped
# weights record the version that made them, and one made by another is not installed.
_PRETRAIN_VERSION = "p1"

# Pre-trained base-model weights shipped with the project, one folder per config fingerprint.
SHIPPED_WEIGHTS_DIR = Path(__file__).with_name("toyworld_weights")
# The model files `save_pretrained` writes: what a shipped folder holds besides its provenance.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
# In a shipped folder: the hashes of the corpus and tokenizer the weights were trained on.
# In a built world's root: where its base model came from ("pretrained" or "shipped").
PROVENANCE_FILE = "provenance.json"


class ToyWorldPaths(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path
    model: Path
    tokenizer: Path
    upstream: Path
    downstream: Path

    def data_path(self, domain: str) -> Path:
        return {UPSTREAM: self.upstream, DOWNSTREAM: self.downstream}[domain]


def default_cache_dir() -> Path:
    """`$REWARM_CACHE_DIR`, else `~/.cache/rewarm` (shared by all runs on a machine)."""
    env = os.environ.get("REWARM_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "rewarm"


def toy_world_paths(cfg: ToyWorldConfig, cache_dir: Path | None = None) -> ToyWorldPaths:
    root = (cache_dir or default_cache_dir()) / "toyworld" / cfg.fingerprint()
    return ToyWorldPaths(
        root=root,
        model=root / "base_model",
        tokenizer=root / "base_model",  # saved beside the model, as on the hub
        upstream=root / "data" / "upstream.jsonl",
        downstream=root / "data" / "downstream.jsonl",
    )


def ensure_toy_world(cfg: ToyWorldConfig, cache_dir: Path | None = None, log=print,
                     shipped_weights: Path | None = SHIPPED_WEIGHTS_DIR) -> ToyWorldPaths:
    """Build the toy world into the cache on first use; afterwards just return its paths.

    The base model comes from `shipped_weights/<fingerprint>` where that folder was trained
    on exactly the corpus and tokenizer just built, else it is pre-trained here
    (`shipped_weights=None` always pre-trains). A file lock makes concurrent callers
    (parallel tests, sweep drivers) wait for one builder; the build goes to a temporary
    directory renamed into place, so a killed build never leaves a half-made world that
    looks complete.
    """
    paths = toy_world_paths(cfg, cache_dir)
    done_marker = paths.root / "COMPLETE"
    if done_marker.exists():
        return paths
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(paths.root.parent / f".{paths.root.name}.lock"):
        if done_marker.exists():
            return paths
        tmp = Path(tempfile.mkdtemp(dir=paths.root.parent, prefix=f".{paths.root.name}-build-"))
        try:
            tmp_paths = _relocate(paths, tmp)  # same layout, under the temporary root
            t0 = time.time()
            _write_corpus(cfg, tmp_paths)
            _train_tokenizer(cfg, tmp_paths)
            source = "shipped" if _install_shipped_weights(cfg, tmp_paths, shipped_weights, log) else "pretrained"
            if source == "pretrained":
                _pretrain_base_model(cfg, tmp_paths, log=log)
            (tmp / PROVENANCE_FILE).write_text(json.dumps({"base_model": source}))
            (tmp / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
            (tmp / "COMPLETE").write_text(f"built in {time.time() - t0:.1f}s\n")
            if paths.root.exists():
                shutil.rmtree(paths.root)
            os.replace(tmp, paths.root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _relocate(paths: ToyWorldPaths, new_root: Path) -> ToyWorldPaths:
    return ToyWorldPaths(
        root=new_root,
        **{k: new_root / Path(v).relative_to(paths.root)
           for k, v in paths.model_dump().items() if k != "root"},
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _training_inputs(paths: ToyWorldPaths) -> dict[str, str]:
    """What a base model's weights depend on besides its config: the corpus and tokenizer
    bytes, and the pre-training code's version."""
    return {"upstream_sha256": _sha256(paths.upstream), "tokenizer_sha256": _sha256(paths.tokenizer / "tokenizer.json"),
            "pretrain": _PRETRAIN_VERSION}


def _shipped_mismatch(folder: Path, paths: ToyWorldPaths) -> str | None:
    """Why the shipped base model in `folder` is not the one this build would pre-train, or
    None where it is: trained on other inputs, or a file missing or not the bytes that shipped
    (a truncated copy, a Git LFS pointer)."""
    recorded, inputs = json.loads((folder / PROVENANCE_FILE).read_text()), _training_inputs(paths)
    if {k: recorded.get(k) for k in inputs} != inputs:
        return "was trained on another corpus or tokenizer, or by another version of the pre-training"
    for name in _MODEL_FILES:
        if not (folder / name).is_file() or _sha256(folder / name) != recorded.get("files", {}).get(name):
            return f"has a {name} that is missing or not the file that shipped"
    return None


def _install_shipped_weights(cfg: ToyWorldConfig, paths: ToyWorldPaths, shipped: Path | None, log) -> bool:
    """Copy the shipped base model of this config into a world being built; False (pre-train
    instead, saying why) where none ships or it is not what this build would pre-train."""
    folder = shipped / cfg.fingerprint() if shipped is not None else None
    if folder is None or not (folder / PROVENANCE_FILE).exists():
        return False
    why = _shipped_mismatch(folder, paths)
    if why:
        log(f"[toyworld] the shipped base model {folder.name} {why}; pre-training one here (~3 min on 2 cores)")
        return False
    for name in _MODEL_FILES:
        shutil.copyfile(folder / name, paths.model / name)
    return True


def ship_base_model(paths: ToyWorldPaths, cfg: ToyWorldConfig, dest: Path = SHIPPED_WEIGHTS_DIR) -> Path:
    """Copy a built world's pre-trained base model into `dest/<fingerprint>` with the hashes of
    the corpus and tokenizer it was trained on (what `_install_shipped_weights` checks)."""
    source = json.loads((paths.root / PROVENANCE_FILE).read_text())["base_model"]
    if source != "pretrained":
        raise ValueError(f"{paths.root} holds {source} weights, not weights pre-trained by this build")
    folder = dest / cfg.fingerprint()
    folder.mkdir(parents=True, exist_ok=True)
    for name in _MODEL_FILES:
        shutil.copyfile(paths.model / name, folder / name)
    import torch

    (folder / PROVENANCE_FILE).write_text(json.dumps({
        **_training_inputs(paths), "files": {name: _sha256(folder / name) for name in _MODEL_FILES},
        "config": cfg.model_dump(), "generator": _GENERATOR_VERSION,
        "torch": torch.__version__, "built": (paths.root / "COMPLETE").read_text().strip(),
    }, indent=2) + "\n")
    return folder


@contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- corpus


class _Language:
    """A topic-conditioned first-order Markov language over a word lexicon, with noise."""

    def __init__(self, words: list[str], succ: np.ndarray, weights: np.ndarray, starts: np.ndarray, noise: float):
        self.words = words  # [V]
        self.succ = succ  # [T, V, K] successor word ids
        self.weights = weights  # [K] Zipf weights shared by all rows
        self.starts = starts  # [T, S] sentence-start word ids
        self.noise = noise  # probability of a uniformly drawn next word

    def sentence(self, topic: int, rng: np.random.Generator) -> list[int]:
        """Word ids of one sentence in `topic` (the corpus and the tasks draw them the same way)."""
        w = int(self.starts[topic, rng.integers(self.starts.shape[1])])
        out = [w]
        for _ in range(rng.integers(4, 12)):
            if rng.random() < self.noise:
                w = int(rng.integers(len(self.words)))
            else:
                w = int(self.succ[topic, w, rng.choice(self.succ.shape[2], p=self.weights)])
            out.append(w)
        return out

    def text(self, ids: list[int]) -> str:
        """Words joined by spaces; -1 is the sentence end "."."""
        return " ".join("." if i < 0 else self.words[i] for i in ids)

    def document(self, rng: np.random.Generator) -> str:
        topic = int(rng.integers(self.succ.shape[0]))
        ids: list[int] = []
        for _ in range(rng.integers(3, 8)):
            ids += self.sentence(topic, rng) + [-1]
        return self.text(ids)


def _make_word(rng: np.random.Generator, syllables: tuple[int, int]) -> str:
    return "".join(_UP_CONSONANTS[rng.integers(len(_UP_CONSONANTS))] + _UP_VOWELS[rng.integers(len(_UP_VOWELS))]
                   for _ in range(rng.integers(*syllables)))


def _lexicon(rng, n, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        w = _make_word(rng, syllables)
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def build_languages(cfg: ToyWorldConfig) -> tuple[_Language, _Language]:
    rng = np.random.default_rng([cfg.seed, 1])
    V, T, K = cfg.vocab_words, cfg.topics, cfg.successors
    taken: set[str] = set()
    up_words = _lexicon(rng, V, _SYLLABLES, taken)
    weights = 1.0 / np.arange(1, K + 1)
    weights /= weights.sum()
    up_succ = rng.integers(V, size=(T, V, K))
    up_starts = rng.integers(V, size=(T, 8))
    upstream = _Language(up_words, up_succ, weights, up_starts, cfg.noise)

    # Downstream: the same grammar with each transition row and sentence start redrawn with
    # probability `shift`, and a share `new_word_frac` of the words replaced by new ones.
    s = cfg.shift
    new_words = _lexicon(rng, V, _SYLLABLES, taken)
    swap_word = rng.random(V) < cfg.new_word_frac
    down_words = [new if swap else old for old, new, swap in zip(up_words, new_words, swap_word)]
    redraw = rng.random((T, V)) < s
    down_succ = np.where(redraw[..., None], rng.integers(V, size=(T, V, K)), up_succ)
    down_starts = np.where(rng.random((T, 8)) < s, rng.integers(V, size=(T, 8)), up_starts)
    downstream = _Language(down_words, down_succ, weights, down_starts, cfg.noise)
    return upstream, downstream


def _write_corpus(cfg: ToyWorldConfig, paths: ToyWorldPaths) -> None:
    upstream, downstream = build_languages(cfg)
    paths.upstream.parent.mkdir(parents=True, exist_ok=True)
    for domain, lang, path, count in ((UPSTREAM, upstream, paths.upstream, cfg.upstream_documents),
                                      (DOWNSTREAM, downstream, paths.downstream, cfg.documents)):
        rng = np.random.default_rng([cfg.seed, 2, 0 if domain == UPSTREAM else 1])
        with open(path, "w") as fh:
            for i in range(count):
                fh.write(json.dumps({"id": f"{domain}-{i}", "text": lang.document(rng)}) + "\n")


# --------------------------------------------------------------------------- tokenizer


def _train_tokenizer(cfg: ToyWorldConfig, paths: ToyWorldPaths) -> None:
    """Byte-level BPE trained on upstream only, like a base model's own tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.tokenizer_vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts():
        with open(paths.upstream) as fh:
            for line in fh:
                yield json.loads(line)["text"]

    tok.train_from_iterator(texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
        model_max_length=cfg.max_positions,
    )
    fast.save_pretrained(paths.tokenizer)


# --------------------------------------------------------------------------- base model


def _pretrain_base_model(cfg: ToyWorldConfig, paths: ToyWorldPaths, log=print) -> None:
    """Pre-train a tiny GPT-NeoX (Pythia architecture) on upstream, then `save_pretrained`.

    Uses its own short loop on purpose: this stands in for the months of pre-training
    behind a hub checkpoint, not for a Rewarm run.
    """
    import math

    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from trainers.data import pack_token_stream, tokenize_texts

    tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer)
    with open(paths.upstream) as fh:
        texts = [json.loads(line)["text"] for line in fh]
    blocks = pack_token_stream(tokenize_texts(tokenizer, texts), cfg.pretrain_seq_len)

    torch.manual_seed(cfg.seed)
    model_cfg = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.max_positions, rotary_pct=0.25, use_parallel_residual=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False, attention_dropout=0.0, hidden_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    warm = max(1, cfg.pretrain_steps // 20)
    data = torch.from_numpy(blocks.astype(np.int64))
    t0 = time.time()
    for step in range(cfg.pretrain_steps):
        # The base model's own schedule: warmup then cosine to 10%, as Pythia's was.
        if step < warm:
            lr = cfg.pretrain_lr * (step + 1) / warm
        else:
            p = (step - warm) / max(1, cfg.pretrain_steps - warm)
            lr = cfg.pretrain_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * p)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(data), (cfg.pretrain_batch,), generator=gen)
        batch = data[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 500 == 0 or step == cfg.pretrain_steps - 1:
            log(f"[toyworld] base-model pre-training step {step}/{cfg.pretrain_steps} "
                f"loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.save_pretrained(paths.model, safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m trainers.toyworld ship`: pre-train the default world's base model in a fresh
    cache and ship it (`make toyworld-weights`; commit the folder it prints)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainers.toyworld")
    parser.add_argument("command", choices=["ship"])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where to build (default: a new temporary directory)")
    args = parser.parse_args(argv)
    cfg = ToyWorldConfig()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="toyworld-ship-"))
    paths = ensure_toy_world(cfg, cache, shipped_weights=None)
    print(ship_base_model(paths, cfg))


if __name__ == "__main__":
    main()
