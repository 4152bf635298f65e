"""Loading through HF datasets from local files of every supported kind, packing, splitting."""

import json
import os

import numpy as np
import pytest

from trainers.data import DataError, DataSource, load_texts, pack_token_stream, prepare_domain, tokenize_texts

DOCS = [f"document number {i} says hello" for i in range(40)]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(DOCS)))
    (tmp_path / "d.json").write_text(json.dumps([{"body": t} for t in DOCS]))
    (tmp_path / "d.txt").write_text("\n".join(DOCS) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS}), tmp_path / "d.parquet")
    return tmp_path


@pytest.mark.parametrize("name,field", [("d.jsonl", "text"), ("d.json", "body"), ("d.txt", "text"), ("d.parquet", "text")])
def test_local_files_load_through_datasets(files, name, field):
    assert load_texts(DataSource(path=str(files / name), text_field=field)) == DOCS


def test_directory_of_files_and_max_documents(files, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[:10]))
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[10:]))
    assert load_texts(DataSource(path=str(d))) == DOCS
    assert load_texts(DataSource(path=str(d), max_documents=5)) == DOCS[:5]


@pytest.mark.parametrize("source,message", [
    (lambda p: DataSource(path=str(p / "missing.jsonl")), "does not exist"),
    (lambda p: DataSource(path=str(p / "d.jsonl"), text_field="content"), "no text field 'content'"),
    (lambda p: DataSource(path=str(p / "empty")), "no .json"),
])
def test_bad_sources_name_the_cause(files, source, message):
    (files / "empty").mkdir()
    with pytest.raises(DataError, match=message):
        load_texts(source(files))


def test_hub_loading_reports_the_cause_offline():
    # The hub path is real code; with no network here it must fail with a readable cause. In a
    # fresh process: `datasets` and `huggingface_hub` read the offline switches when imported
    # (set later, in this process, they would first retry the network for ~20 s).
    import subprocess
    import sys

    code = ("from trainers.data import DataSource, DataError, load_texts\n"
            "try:\n    load_texts(DataSource(path='rewarm-test/no-such-dataset'))\n"
            "except DataError as exc:\n    print('DataError:', exc)\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "DataError:" in proc.stdout and "cannot load from the hub" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_pack_drops_ragged_tail():
    packed = pack_token_stream(np.arange(10), 4)
    assert packed.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_prepare_domain_splits_by_document_and_caches(toy_world, files, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_world.tokenizer)
    stream = tokenize_texts(tok, DOCS[:2])
    assert stream[len(tok(DOCS[0])["input_ids"])] == tok.eos_token_id
    src = DataSource(path=str(toy_world.downstream))
    a = prepare_domain(src, toy_world.tokenizer, 32, 0.05, 16, tmp_path / "cache")
    b = prepare_domain(src, toy_world.tokenizer, 32, 0.05, 16, tmp_path / "cache")
    assert a == b and a.val_sequences == 16
    train, val = np.load(a.train), np.load(a.val)
    assert train.shape[1] == val.shape[1] == 32
    # Held-out blocks come from held-out documents: no validation block appears in training.
    train_rows = {row.tobytes() for row in train}
    assert not any(row.tobytes() in train_rows for row in val)
    with pytest.raises(DataError, match="validation sequences"):
        prepare_domain(DataSource(path=str(files / "d.jsonl")), toy_world.tokenizer, 32, 0.05, 500, tmp_path / "cache")
