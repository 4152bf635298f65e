"""The embedded toy world: deterministic from its config, cached by fingerprint, loaded through
the hub's own paths (AutoTokenizer, AutoModelForCausalLM, datasets)."""

from __future__ import annotations

import hashlib
import inspect
import json

import numpy as np
import pytest

from trainers import data, toyworld
from trainers.toyworld import (DOWNSTREAM, PROVENANCE_FILE, SHIPPED_WEIGHTS_DIR, UPSTREAM, ToyWorldConfig,
                               build_languages, ensure_toy_world, ship_base_model)

# A world small enough to build twice in seconds; every generator step still runs.
TINY = ToyWorldConfig(vocab_words=40, topics=2, successors=3, documents=120, upstream_documents=120,
                      tokenizer_vocab=300, hidden_size=16, layers=1, heads=2, max_positions=64,
                      pretrain_steps=3, pretrain_seq_len=16, pretrain_batch=2)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("COMPLETE", PROVENANCE_FILE)}


def _quiet(*_):
    pass


def _source(paths) -> str:
    return json.loads((paths.root / PROVENANCE_FILE).read_text())["base_model"]


def test_the_same_config_builds_the_same_world_byte_for_byte(tmp_path):
    a = ensure_toy_world(TINY, tmp_path / "a", log=lambda *_: None)
    b = ensure_toy_world(TINY, tmp_path / "b", log=lambda *_: None)
    da, db = _digest(a.root), _digest(b.root)
    assert {"base_model/model.safetensors", "base_model/tokenizer.json", "data/upstream.jsonl",
            "data/downstream.jsonl"} <= set(da)
    assert da == db


def test_the_default_worlds_shipped_weights_were_trained_on_the_corpus_and_tokenizer_it_generates(toy_world):
    """The shipped base model belongs to today's generator: a change to the corpus or the
    tokenizer without new weights fails here (`make toyworld-weights` makes them)."""
    shipped = json.loads((SHIPPED_WEIGHTS_DIR / ToyWorldConfig().fingerprint() / PROVENANCE_FILE).read_text())
    assert shipped["config"] == ToyWorldConfig().model_dump()
    assert shipped["upstream_sha256"] == hashlib.sha256(toy_world.upstream.read_bytes()).hexdigest()
    assert shipped["tokenizer_sha256"] == hashlib.sha256((toy_world.tokenizer / "tokenizer.json").read_bytes()).hexdigest()
    assert shipped["pretrain"] == toyworld._PRETRAIN_VERSION
    folder = SHIPPED_WEIGHTS_DIR / ToyWorldConfig().fingerprint()
    assert shipped["files"] == {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                                for name in ("config.json", "generation_config.json", "model.safetensors")}
    assert json.loads((toy_world.root / PROVENANCE_FILE).read_text())["base_model"] in ("shipped", "pretrained")


# The pre-training code the shipped weights were made by, as source. An edit of any of these
# fails here: if it changes what pre-training makes, bump toyworld._PRETRAIN_VERSION and run
# `make toyworld-weights` (else shipped weights would stand in for a model this code no longer
# makes); either way, record the new hash.
PRETRAIN_SOURCE_SHA256 = "a4c8e112d753cb25b6e9199d615b99f1478002fbbacd2c923047804717260816"


def _pretrain_source_sha256() -> str:
    sources = [inspect.getsource(f) for f in (toyworld._pretrain_base_model, data.pack_token_stream, data.tokenize_texts)]
    return hashlib.sha256("\n".join(sources + [toyworld._PRETRAIN_VERSION]).encode()).hexdigest()


def test_the_pretraining_code_is_the_one_the_shipped_weights_were_made_by():
    assert _pretrain_source_sha256() == PRETRAIN_SOURCE_SHA256, (
        "the base model's pre-training code changed: if it changes what it makes, bump "
        "trainers/toyworld.py:_PRETRAIN_VERSION and run `make toyworld-weights`; then record the new hash here")


def test_shipped_weights_are_used_only_over_the_corpus_and_tokenizer_they_were_trained_on(tmp_path):
    pretrained = ensure_toy_world(TINY, tmp_path / "a", log=_quiet, shipped_weights=None)
    assert _source(pretrained) == "pretrained"
    weights = tmp_path / "weights"
    ship_base_model(pretrained, TINY, weights)

    logs: list[str] = []
    installed = ensure_toy_world(TINY, tmp_path / "b", log=logs.append, shipped_weights=weights)
    assert _source(installed) == "shipped" and not any("pre-training step" in line for line in logs)
    assert _digest(installed.root) == _digest(pretrained.root)
    with pytest.raises(ValueError, match="shipped weights"):
        ship_base_model(installed, TINY, tmp_path / "again")  # only weights pre-trained by the build ship

    provenance = weights / TINY.fingerprint() / PROVENANCE_FILE
    shipped = json.loads(provenance.read_text())
    model = weights / TINY.fingerprint() / "model.safetensors"
    good = model.read_bytes()
    # Each way a shipped model can differ from what this build would pre-train: pre-trained again, saying why.
    for i, (change, why) in enumerate((
            ({"tokenizer_sha256": "0" * 64}, "trained on another corpus or tokenizer"),
            ({"pretrain": "p0"}, "by another version of the pre-training"),
            ("truncated", "model.safetensors that is missing or not the file that shipped"),
            ("missing", "model.safetensors that is missing or not the file that shipped"))):
        provenance.write_text(json.dumps({**shipped, **change} if isinstance(change, dict) else shipped))
        if change == "truncated":
            model.write_bytes(good[:1000])
        elif change == "missing":
            model.unlink()
        logs.clear()
        rebuilt = ensure_toy_world(TINY, tmp_path / f"c{i}", log=logs.append, shipped_weights=weights)
        assert _source(rebuilt) == "pretrained", change
        assert any(why in line for line in logs), (change, logs)
        assert any("pre-training step" in line for line in logs)
        model.write_bytes(good)


def test_a_built_world_is_reused_and_any_field_change_is_a_new_entry(tmp_path):
    paths = ensure_toy_world(TINY, tmp_path, log=lambda *_: None)
    built = (paths.root / "COMPLETE").stat().st_mtime_ns
    assert ensure_toy_world(TINY, tmp_path, log=lambda *_: None) == paths
    assert (paths.root / "COMPLETE").stat().st_mtime_ns == built
    for change in ({"seed": 1}, {"shift": 0.5}, {"noise": 0.2}, {"new_word_frac": 0.0}, {"pretrain_steps": 4}):
        assert TINY.model_copy(update=change).fingerprint() != TINY.fingerprint(), change


def test_the_world_loads_through_the_hub_paths(tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = ensure_toy_world(TINY, tmp_path, log=lambda *_: None)
    tok = AutoTokenizer.from_pretrained(paths.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(paths.model)
    assert model.config.model_type == "gpt_neox" and model.config.vocab_size == len(tok)
    for domain in (UPSTREAM, DOWNSTREAM):
        ds = datasets.load_dataset("json", data_files=str(paths.data_path(domain)), split="train")
        n = TINY.upstream_documents if domain == UPSTREAM else TINY.documents
        assert len(ds) == n and all(isinstance(t, str) and t for t in ds["text"][:10])
    ids = tok(ds["text"][0], return_tensors="pt").input_ids
    assert model(input_ids=ids[:, :32]).logits.shape[-1] == len(tok)


@pytest.mark.parametrize("shift,new_word_frac", [(0.0, 0.0), (0.4, 0.1), (1.0, 0.5)])
def test_shift_redraws_that_share_of_the_grammar_and_new_words_that_share_of_the_lexicon(shift, new_word_frac):
    cfg = ToyWorldConfig(shift=shift, new_word_frac=new_word_frac)
    up, down = build_languages(cfg)
    same_rows = np.all(up.succ == down.succ, axis=-1).mean()
    same_words = np.mean([a == b for a, b in zip(up.words, down.words)])
    # Redrawn rows can coincide with the old one only by chance (K successors out of V words).
    assert same_rows == pytest.approx(1 - shift, abs=0.03)
    assert same_words == pytest.approx(1 - new_word_frac, abs=0.04)
    assert len(set(down.words)) == len(down.words)  # new words never collide with each other or kept ones
