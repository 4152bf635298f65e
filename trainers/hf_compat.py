"""Every transformers internal Rewarm relies on, in one place, each with a canary test
(tests/test_hf_compat.py): when transformers changes one, the canary names it.

- `checkpoint_key_map`: which safetensors key holds each model parameter. transformers 5
  renames keys while loading (`conversion_mapping.py`: GPT-NeoX's `embed_out` is the model's
  `lm_head`); its `revert_weight_conversion` (what `save_pretrained` uses) is run on probe
  tensors, and the map is returned only when every key maps one to one (pure renames).
  Models whose loading also merges or splits tensors get None.
- `init_non_persistent_buffers`: buffers in no state dict (rotary frequencies), computed by
  the model's own `_init_weights` on the modules that own them.
- `read_model_config` / `max_positions`: a model's config.json and its longest sequence, read
  without transformers where config.json names it (`MAX_POSITION_KEYS`; otherwise the config
  class's default, through transformers): the sweep driver checks `data.seq_len` before any
  trial, and importing transformers to do it (its lazy module table is built on import)
  costs ~1.1 s a command.

torch is imported where it is used: the driver imports this module and never needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path

# Where configs keep their longest sequence: transformers' own name, then the name GPT-2-style
# configs store it under (their `attribute_map` maps `max_position_embeddings` to it).
MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions")


def read_model_config(model_path: str) -> dict:
    """config.json of a model directory or hub repo (the hub's cache first, as transformers
    reads it; no download where HF_HUB_OFFLINE is set). Raises OSError saying why it cannot."""
    local = Path(model_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(model_path).exists():
        raise OSError(f"{model_path} has no config.json")
    if model_path.startswith(("/", ".", "~")):
        raise OSError(f"no such directory {model_path}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    # huggingface_hub's own messages put the cause after a first line of HTTP status and
    # request id; the one line Rewarm prints must name it.
    try:
        path = hf_hub_download(model_path, "config.json")
    except GatedRepoError:
        raise OSError("the model is gated on the hub: accept its terms there and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise OSError("no such model on the hub (or it is private: set HF_TOKEN)") from None
    except EntryNotFoundError:
        raise OSError("the hub repo has no config.json") from None
    except LocalEntryNotFoundError:
        raise OSError("not in the local hub cache, and the hub cannot be reached (offline?)") from None
    return json.loads(Path(path).read_text())


def max_positions(model_path: str) -> int | None:
    """The model's longest sequence, or None where it has none (ALiBi models). From config.json
    where it names it; otherwise transformers' default for the model's config class (a
    hand-written config.json may leave it out), which costs the transformers import. Raises
    OSError (read_model_config) when there is no config to read."""
    config = read_model_config(model_path)
    for key in MAX_POSITION_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)


def checkpoint_key_map(model) -> dict[str, str] | None:
    """{model state-dict key: checkpoint key} when loading renames keys only, else None."""
    import torch
    from transformers.core_model_loading import revert_weight_conversion

    keys = list(model.state_dict().keys())
    probe = {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}
    reverted = revert_weight_conversion(model, dict(probe))
    out = {}
    for checkpoint_key, tensor in reverted.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != (1,):
            return None  # a converter merged or split tensors
        index = int(tensor.item())
        if not 0 <= index < len(keys) or keys[index] in out:
            return None
        out[keys[index]] = checkpoint_key
    return out if len(out) == len(keys) else None


def init_non_persistent_buffers(model) -> None:
    for module in model.modules():
        if any(name in module._non_persistent_buffers_set for name, _ in module.named_buffers(recurse=False)):
            model._init_weights(module)


def safetensors_index(model_path: str) -> dict[str, Path] | None:
    """{checkpoint key: its .safetensors file} of a local model directory (or a hub model's
    files, fetched once per node), None when the weights are not in safetensors."""
    from safetensors import safe_open

    root = Path(model_path)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(model_path, allow_patterns=["*.safetensors", "*.json"]))
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: root / name for key, name in weight_map.items()}
    single = root / "model.safetensors"
    if not single.exists():
        return None
    with safe_open(str(single), "pt") as f:
        return {key: single for key in f.keys()}
