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
