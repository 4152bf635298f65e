"""Text data: load with HF `datasets`, tokenise, pack into fixed-length sequences, in bounded memory.

A domain's data is prepared once per (source and its files' sizes and times, tokenizer,
sequence length) and cached as two `.npy` token-block arrays (train and held-out
validation), so every trial and every worker memory-maps the same blocks instead of
re-tokenising. Validation blocks come from documents that never reach training: the split
is made on documents before packing.

The corpus never sits whole in one process: `datasets` keeps it as memory-mapped Arrow
files, tokenisation runs in `Dataset.map` over `num_proc` processes into an Arrow cache (2
bytes a token), and packing streams that cache batch by batch into a memory-mapped `.npy`.
The driver's peak memory is set by the batch size, not by the corpus
(`benchmarks/scale_bench.py` measures it at two corpus sizes).
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
    streaming: bool = Field(False, description="Read the source as a stream. With max_documents: only those documents are read, then prepared like any source. Without: training reads the stream on the workers as it goes (for corpora too large to prepare up front); validation is the stream's first documents.")

    @property
    def trains_from_stream(self) -> bool:
        return self.streaming and self.max_documents is None


class StreamedTrain(BaseModel):
    """A domain whose training blocks the workers read from a stream as they train
    (trainers/streaming.py), instead of from blocks prepared up front."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: DataSource
    tokenizer: str = Field(description="Tokenizer path or name; workers tokenise as they read.")
    skip_documents: int = Field(ge=0, description="The stream's first documents, held out for validation.")


class PreparedDomain(BaseModel):
    """A domain as handed to workers: packed validation blocks, and training blocks packed up
    front (`train`) or read from a stream as training goes (`stream`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: Path | None = Field(description="Packed training blocks [N, seq_len] (.npy); None when streamed.")
    val: Path
    train_sequences: int | None = Field(description="Training blocks packed up front; None when streamed (unknown).")
    val_sequences: int
    stream: StreamedTrain | None = None


def load_source(source: DataSource, cache_dir: Path | None = None):
    """The source's documents as a map-style `datasets.Dataset` (memory-mapped Arrow) with one
    column, `text`, of non-empty strings; every problem is a one-line `DataError`."""
    import datasets

    datasets.disable_progress_bars()
    if source.trains_from_stream:
        raise DataError(f"data source {source.path!r}: streamed without max_documents, it is read during "
                        f"training and is never loaded whole")
    hf_cache = str(cache_dir / "datasets") if cache_dir else None
    local = Path(source.path).expanduser()
    if local.exists():
        files = _local_files(source, local)
        builder = _LOCAL_BUILDERS[files[0].suffix]
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", cache_dir=hf_cache)
        except Exception as exc:  # malformed JSON/parquet surfaces as many exception types
            raise DataError(f"data source {source.path!r}: cannot read as {builder} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    elif source.path.startswith(("/", ".", "~")) or source.path.endswith(tuple(_LOCAL_BUILDERS)):
        raise DataError(f"data source {source.path!r}: file or directory does not exist")
    else:
        try:
            ds = datasets.load_dataset(source.path, source.name, split=source.split, streaming=source.streaming,
                                       cache_dir=hf_cache)
        except Exception as exc:  # hub errors come in many classes; the cause is what matters
            raise DataError(f"data source {source.path!r}: cannot load from the hub ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    columns = ds.column_names or []
    if source.text_field not in columns:
        raise DataError(f"data source {source.path!r}: no text field {source.text_field!r} (columns: {columns})")
    field = source.text_field
    if source.streaming and not local.exists():
        # Only the first max_documents rows are downloaded, written to Arrow as they arrive.
        stream = ds.select_columns([field]).take(source.max_documents)
        ds = datasets.Dataset.from_generator(lambda: ({"text": row[field]} for row in stream), cache_dir=hf_cache)
        field = "text"
    elif source.max_documents is not None:
        ds = ds.select(range(min(source.max_documents, len(ds))))
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    ds = ds.filter(lambda batch: [bool(t) for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise DataError(f"data source {source.path!r}: no non-empty text in field {source.text_field!r}")
    return ds


def _local_files(source: DataSource, local: Path) -> list[Path]:
    files = sorted(p for p in local.rglob("*") if p.suffix in _LOCAL_BUILDERS) if local.is_dir() else [local]
    if not files:
        raise DataError(f"data source {source.path!r}: no .json/.jsonl/.parquet/.txt files in the directory")
    suffixes = {f.suffix for f in files}
    if len(suffixes) != 1 or files[0].suffix not in _LOCAL_BUILDERS:
        raise DataError(f"data source {source.path!r}: expected files of one type among "
                        f"{sorted(_LOCAL_BUILDERS)}, found {sorted(suffixes)}")
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"data source {source.path!r}: empty (no documents)")
    return files


def load_texts(source: DataSource) -> list[str]:
    """The source's non-empty texts as a list: for small sources (tests, the toy world) only."""
    return load_source(source)["text"]


def tokenize_texts(tokenizer, texts: list[str]) -> np.ndarray:
    """Tokenise documents and join them into one stream, each followed by EOS (small inputs)."""
    ids = tokenize_documents({"text": texts}, tokenizer)["input_ids"]
    return np.fromiter((t for doc in ids for t in doc), dtype=token_dtype(tokenizer))


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16 if len(tokenizer) < 2**16 else np.uint32)


def tokenize_documents(batch: dict, tokenizer) -> dict:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no eos_token_id; documents could not be separated when packing")
    # verbose=False: documents longer than the model's context are expected, packing cuts them.
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    return {"input_ids": [doc + [eos] for doc in ids], "n": [len(doc) + 1 for doc in ids]}


def pack_token_stream(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a token stream into [N, seq_len] blocks; the ragged tail is dropped."""
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def pack_to_file(tokenized, seq_len: int, path: Path, dtype: np.dtype, batch_size: int = 10_000,
                 max_blocks: int | None = None) -> int:
    """Pack the documents of a tokenized `Dataset` (in order, each ending in EOS) into
    [N, seq_len] blocks in a memory-mapped `.npy` at `path`, one Arrow batch at a time; the
    ragged tail is dropped. Returns N."""
    import pyarrow.compute as pc

    total = sum(int(pc.sum(t.column("n")).as_py() or 0)
                for t in tokenized.select_columns(["n"]).with_format("arrow").iter(batch_size=batch_size))
    n_blocks = total // seq_len if max_blocks is None else min(total // seq_len, max_blocks)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_blocks, seq_len))
    flat, pos, room = out.reshape(-1), 0, n_blocks * seq_len
    for table in tokenized.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=batch_size):
        if pos >= room:
            break
        tokens = table.column("input_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        take = min(len(tokens), room - pos)
        flat[pos:pos + take] = tokens[:take]
        pos += take
    out.flush()
    del out, flat
    return n_blocks


def prepare_domain(
    source: DataSource, tokenizer_path: str | Path, seq_len: int, val_fraction: float,
    min_val_sequences: int, cache_dir: Path, num_proc: int | None = None,
) -> PreparedDomain:
    """Tokenise and pack one domain into cached train/val block files (reused when present)."""
    import shutil

    key = hashlib.sha256(json.dumps({
        "source": source.model_dump(), "files": source_fingerprint(source),
        "tokenizer": _fingerprint_path(Path(tokenizer_path)),
        "seq_len": seq_len, "val_fraction": val_fraction, "min_val": min_val_sequences, "v": 2,
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = cache_dir / "prepared" / key
    meta_path = out / "meta.json"
    if meta_path.exists():
        return PreparedDomain(**json.loads(meta_path.read_text()))
    # Imported past the cache: every sweep resolves its domains, and a cached one needs neither
    # (importing both costs the driver ~2 s on 2 cores).
    from datasets import Features, Sequence, Value
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    dtype = token_dtype(tokenizer)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if source.trains_from_stream:
        return _finish_prepared(tmp, out, _prepare_stream_validation(source, tokenizer, str(tokenizer_path), seq_len,
                                                                      min_val_sequences, tmp, out))
    ds = load_source(source, cache_dir)
    # One process per core for big corpora; below ~20k documents the processes cost more than they save.
    num_proc = num_proc if num_proc is not None else (min(os.cpu_count() or 1, 8) if len(ds) > 20_000 else None)
    tokenized = ds.map(tokenize_documents, batched=True, batch_size=1000, num_proc=num_proc, remove_columns=["text"],
                       fn_kwargs={"tokenizer": tokenizer}, cache_file_name=str(tmp / "tokens.arrow"),
                       features=Features({"input_ids": Sequence(Value(dtype.name)), "n": Value("int64")}),
                       new_fingerprint=key)
    # Hold out whole documents from the end: the toy corpora and most hub sets are
    # already shuffled, and a document split keeps validation text unseen in training.
    n_val_docs = max(1, int(len(tokenized) * val_fraction))
    n_val = pack_to_file(tokenized.select(range(len(tokenized) - n_val_docs, len(tokenized))), seq_len,
                         tmp / "val.npy", dtype, max_blocks=min_val_sequences)
    if n_val < min_val_sequences:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"data source {source.path!r}: only {n_val} validation sequences of "
                        f"{seq_len} tokens (need {min_val_sequences}); add data or lower data.val_sequences")
    n_train = pack_to_file(tokenized.select(range(len(tokenized) - n_val_docs)), seq_len, tmp / "train.npy", dtype)
    if n_train == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"data source {source.path!r}: too little text for one training sequence of {seq_len} tokens")
    del tokenized
    for arrow in tmp.glob("*.arrow"):  # the blocks are the product; the token cache is spent
        arrow.unlink()
    return _finish_prepared(tmp, out, PreparedDomain(train=out / "train.npy", val=out / "val.npy",
                                                     train_sequences=n_train, val_sequences=n_val))


def _finish_prepared(tmp: Path, out: Path, meta: PreparedDomain) -> PreparedDomain:
    import shutil

    (tmp / "meta.json").write_text(meta.model_dump_json())
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def open_stream(source: DataSource):
    """The source's texts as a `datasets.IterableDataset` (hub or local files), read lazily."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(source.path).expanduser()
    try:
        if local.exists():
            files = _local_files(source, local)
            ds = datasets.load_dataset(_LOCAL_BUILDERS[files[0].suffix], data_files=[str(f) for f in files],
                                       split="train", streaming=True)
        else:
            ds = datasets.load_dataset(source.path, source.name, split=source.split, streaming=True)
    except DataError:
        raise
    except Exception as exc:  # hub and file errors come in many classes; the cause is what matters
        raise DataError(f"data source {source.path!r}: cannot open as a stream ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    columns = ds.column_names
    if columns is not None and source.text_field not in columns:
        raise DataError(f"data source {source.path!r}: no text field {source.text_field!r} (columns: {columns})")
    return ds.select_columns([source.text_field])


def _prepare_stream_validation(source: DataSource, tokenizer, tokenizer_path: str, seq_len: int,
                               min_val_sequences: int, tmp: Path, out: Path) -> PreparedDomain:
    """Validation blocks from the stream's first documents (read until there are enough); training
    will read the stream after them, on the workers."""
    need = min_val_sequences * seq_len
    tokens, used = [], 0
    for row in open_stream(source):
        used += 1
        text = row[source.text_field]
        if text:
            tokens.extend(tokenize_documents({"text": [text]}, tokenizer)["input_ids"][0])
        if len(tokens) >= need:
            break
    if len(tokens) < need:
        raise DataError(f"data source {source.path!r}: the whole stream ({used} documents) gives only "
                        f"{len(tokens) // seq_len} validation sequences of {seq_len} tokens (need {min_val_sequences})")
    np.save(tmp / "val.npy", np.asarray(tokens[:need], dtype=token_dtype(tokenizer)).reshape(min_val_sequences, seq_len))
    return PreparedDomain(train=None, val=out / "val.npy", train_sequences=None, val_sequences=min_val_sequences,
                          stream=StreamedTrain(source=source, tokenizer=tokenizer_path, skip_documents=used))


def source_fingerprint(source: DataSource) -> list:
    """What identifies a local source's content cheaply: each file's path, size and
    modification time (an edited file gets a new cache entry). Hub sources: their name."""
    local = Path(source.path).expanduser()
    if not local.exists():
        return []
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def load_blocks(path: Path) -> np.ndarray:
    """Memory-map packed blocks (read-only, shared between trials on a node)."""
    return np.load(path, mmap_mode="r")


def _fingerprint_path(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "token" in p.name) if path.is_dir() else []:
        h.update(f.read_bytes())
    return h.hexdigest()[:16] if path.is_dir() else str(path)
