"""Text data: load with HF `datasets`, tokenise, pack into fixed-length sequences.

A domain's data is prepared once per (source, tokenizer, sequence length) by the
driver and cached as two `.npy` token-block arrays (train and held-out validation),
so every trial and every worker memory-maps the same blocks instead of re-tokenising.
Validation blocks come from documents that never reach training: the split is made on
documents before packing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trainers.errors import UserError

_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


class DataError(UserError, ValueError):
    """A data source cannot be used; the message names the source and the cause."""


class DataSource(BaseModel):
    """Where one domain's text comes from: a hub dataset name or local files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="HF hub dataset name, or a local .json/.jsonl/.parquet/.txt file or directory of them.")
    name: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Dataset split to read.")
    text_field: str = Field("text", description="Column that holds the text.")
    max_documents: int | None = Field(None, ge=1, description="Use at most this many documents (after the split).")
    streaming: bool = Field(False, description="Stream a hub dataset instead of downloading it whole (needs max_documents).")


class PreparedDomain(BaseModel):
    """Paths of a domain's packed token blocks, as handed to workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: Path
    val: Path
    train_sequences: int
    val_sequences: int


def load_texts(source: DataSource) -> list[str]:
    """Read the text column of a source through `datasets.load_dataset`."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(source.path).expanduser()
    if local.exists():
        files = sorted(p for p in local.rglob("*") if p.suffix in _LOCAL_BUILDERS) if local.is_dir() else [local]
        if not files:
            raise DataError(f"data source {source.path!r}: no .json/.jsonl/.parquet/.txt files in the directory")
        suffixes = {f.suffix for f in files}
        if len(suffixes) != 1 or files[0].suffix not in _LOCAL_BUILDERS:
            raise DataError(f"data source {source.path!r}: expected files of one type among "
                            f"{sorted(_LOCAL_BUILDERS)}, found {sorted(suffixes)}")
        if all(f.stat().st_size == 0 for f in files):
            raise DataError(f"data source {source.path!r}: empty (no documents)")
        builder = _LOCAL_BUILDERS[files[0].suffix]
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        except Exception as exc:  # malformed JSON/parquet surfaces as many exception types
            raise DataError(f"data source {source.path!r}: cannot read as {builder} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    elif source.path.startswith(("/", ".", "~")) or source.path.endswith(tuple(_LOCAL_BUILDERS)):
        raise DataError(f"data source {source.path!r}: file or directory does not exist")
    else:
        if source.streaming and source.max_documents is None:
            raise DataError(f"data source {source.path!r}: streaming needs max_documents")
        try:
            ds = datasets.load_dataset(source.path, source.name, split=source.split, streaming=source.streaming)
        except Exception as exc:  # hub errors come in many classes; the cause is what matters
            raise DataError(f"data source {source.path!r}: cannot load from the hub ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    columns = ds.column_names or []
    if source.text_field not in columns:
        raise DataError(f"data source {source.path!r}: no text field {source.text_field!r} (columns: {columns})")
    if source.streaming:
        texts = [row[source.text_field] for _, row in zip(range(source.max_documents), ds)]
    else:
        if source.max_documents is not None:
            ds = ds.select(range(min(source.max_documents, len(ds))))
        texts = ds[source.text_field]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"data source {source.path!r}: no non-empty text in field {source.text_field!r}")
    return texts


def tokenize_texts(tokenizer, texts: list[str]) -> np.ndarray:
    """Tokenise documents and join them into one stream, each followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no eos_token_id; documents could not be separated when packing")
    # verbose=False: documents longer than the model's context are expected, packing cuts them.
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=dtype)


def pack_token_stream(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a token stream into [N, seq_len] blocks; the ragged tail is dropped."""
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def prepare_domain(
    source: DataSource, tokenizer_path: str | Path, seq_len: int, val_fraction: float,
    min_val_sequences: int, cache_dir: Path,
) -> PreparedDomain:
    """Tokenise and pack one domain into cached train/val block files (reused when present)."""
    from transformers import AutoTokenizer

    key = hashlib.sha256(json.dumps({
        "source": source.model_dump(), "tokenizer": _fingerprint_path(Path(tokenizer_path)),
        "seq_len": seq_len, "val_fraction": val_fraction, "min_val": min_val_sequences, "v": 1,
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = cache_dir / "prepared" / key
    meta_path = out / "meta.json"
    if meta_path.exists():
        return PreparedDomain(**json.loads(meta_path.read_text()))

    texts = load_texts(source)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    # Hold out whole documents from the end: the toy corpora and most hub sets are
    # already shuffled, and a document split keeps validation text unseen in training.
    n_val_docs = max(1, int(len(texts) * val_fraction))
    val_blocks = pack_token_stream(tokenize_texts(tokenizer, texts[-n_val_docs:]), seq_len)
    train_blocks = pack_token_stream(tokenize_texts(tokenizer, texts[:-n_val_docs]), seq_len)
    if len(val_blocks) < min_val_sequences:
        raise DataError(f"data source {source.path!r}: only {len(val_blocks)} validation sequences of "
                        f"{seq_len} tokens (need {min_val_sequences}); add data or lower data.val_sequences")
    if len(train_blocks) == 0:
        raise DataError(f"data source {source.path!r}: too little text for one training sequence of {seq_len} tokens")
    val_blocks = val_blocks[:min_val_sequences]

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "train.npy", train_blocks)
    np.save(tmp / "val.npy", val_blocks)
    meta = PreparedDomain(train=out / "train.npy", val=out / "val.npy",
                          train_sequences=len(train_blocks), val_sequences=len(val_blocks))
    (tmp / "meta.json").write_text(meta.model_dump_json())
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first: theirs is identical
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def load_blocks(path: Path) -> np.ndarray:
    """Memory-map packed blocks (read-only, shared between trials on a node)."""
    return np.load(path, mmap_mode="r")


def _fingerprint_path(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "token" in p.name) if path.is_dir() else []:
        h.update(f.read_bytes())
    return h.hexdigest()[:16] if path.is_dir() else str(path)
