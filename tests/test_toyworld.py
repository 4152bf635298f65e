"""The embedded toy world: deterministic from its config, cached by fingerprint, loaded through
the hub's own paths (AutoTokenizer, AutoModelForCausalLM, datasets)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from trainers.toyworld import DOWNSTREAM, UPSTREAM, ToyWorldConfig, build_languages, ensure_toy_world

# A world small enough to build twice in seconds; every generator step still runs.
TINY = ToyWorldConfig(vocab_words=40, topics=2, successors=3, documents=120, upstream_documents=120,
                      tokenizer_vocab=300, hidden_size=16, layers=1, heads=2, max_positions=64,
                      pretrain_steps=3, pretrain_seq_len=16, pretrain_batch=2)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "COMPLETE"}


def test_the_same_config_builds_the_same_world_byte_for_byte(tmp_path):
    a = ensure_toy_world(TINY, tmp_path / "a", log=lambda *_: None)
    b = ensure_toy_world(TINY, tmp_path / "b", log=lambda *_: None)
    da, db = _digest(a.root), _digest(b.root)
    assert {"base_model/model.safetensors", "base_model/tokenizer.json", "data/upstream.jsonl",
            "data/downstream.jsonl"} <= set(da)
    assert da == db


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
