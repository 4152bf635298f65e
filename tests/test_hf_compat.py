"""Canaries for the transformers internals behind trainers/hf_compat.py: when transformers
changes one, these fail and name it."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from trainers import hf_compat


def _meta_model(path):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))


def test_checkpoint_key_map_follows_transformers_renames(toy_world):
    key_map = hf_compat.checkpoint_key_map(_meta_model(toy_world.model))
    assert key_map["lm_head.weight"] == "embed_out.weight"  # GPT-NeoX's rename in conversion_mapping.py
    assert key_map["gpt_neox.embed_in.weight"] == "gpt_neox.embed_in.weight"
    files = hf_compat.safetensors_index(str(toy_world.model))
    assert set(key_map.values()) == set(files)  # every parameter is found in the checkpoint


def test_non_persistent_buffers_are_recomputed_by_the_models_own_init(toy_world):
    loaded = AutoModelForCausalLM.from_pretrained(toy_world.model)
    empty = _meta_model(toy_world.model)
    empty.to_empty(device="cpu")
    hf_compat.init_non_persistent_buffers(empty)
    assert torch.equal(empty.gpt_neox.rotary_emb.inv_freq, loaded.gpt_neox.rotary_emb.inv_freq)


def test_max_positions_from_config_json_is_what_transformers_reads(toy_world, tmp_path):
    """The driver reads a model's longest sequence from config.json without transformers; it
    must be the value transformers' config gives, for configs that name it either way."""
    import json

    import pytest
    from transformers import GPT2Config, LlamaConfig

    toy = str(toy_world.model)
    assert hf_compat.max_positions(toy) == \
        AutoConfig.from_pretrained(toy).max_position_embeddings
    for config in (GPT2Config(n_positions=321), LlamaConfig(max_position_embeddings=654)):
        config.save_pretrained(tmp_path / config.model_type)
        path = str(tmp_path / config.model_type)
        assert hf_compat.max_positions(path) == config.max_position_embeddings
    # A hand-written config.json that leaves the length out: transformers' default for the class.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    assert hf_compat.max_positions(str(bare)) == \
        AutoConfig.from_pretrained(bare).max_position_embeddings == 2048
    with pytest.raises(OSError, match="no such directory"):
        hf_compat.read_model_config(str(tmp_path / "missing"))
