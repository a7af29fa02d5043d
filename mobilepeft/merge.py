"""Fold an adapter into its base checkpoint, or lower it to a plain PEFT LoRA.

``merge_adapter`` writes a full MobileVLM checkpoint in the input's own layout (same key names,
same weight format and dtypes, config, tokenizer, CLIP config) so any MobileVLM loader reads it
and inference pays nothing for the adapter. ``lower_adapter`` writes the exact PEFT LoRA form of
any method, the canonical input of PEFT, the on-device training artifacts and the runtimes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilepeft.adapters.files import read_adapter_spec, resolve_base_model, save_adapter
from mobilepeft.adapters.inject import adapter_layers, merge_and_unload

VISION_KEY_PREFIX = "model.vision_tower."


def merge_adapter(model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir``: the checkpoint at ``model_dir`` with the adapter (and projector) folded in."""
    from mobilepeft.loading import load_vlm
    from mobilepeft.models.checkpoint import read_state_dict
    from mobilepeft.models.mobilevlm import to_checkpoint_key

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    original = read_state_dict(model_dir)
    model = load_vlm(model_dir, adapter=adapter_dir, load_tokenizer=False, state=original)
    tower_adapted = any(to_checkpoint_key(path).startswith(VISION_KEY_PREFIX) for path in adapter_layers(model))
    merge_and_unload(model)
    return save_like_input(model, model_dir, out_dir, original, tower_changed=tower_adapted)


def save_like_input(model: torch.nn.Module, model_dir: str | Path, out_dir: str | Path,
                    original: dict[str, torch.Tensor] | None = None, *, tower_changed: bool = False) -> Path:
    """Write ``model``'s weights as a checkpoint in ``model_dir``'s own layout (its key names,
    weight format, dtypes, shard size, config, tokenizer and CLIP config).

    Used for merged adapters and for full fine-tuning. A CLIP tower that ``model_dir`` reads from a
    local directory is written only when ``tower_changed`` (then all of it: a partial tower would
    not load).
    """
    from mobilepeft.models.checkpoint import (
        largest_shard_bytes,
        read_state_dict,
        save_checkpoint,
        weight_layout,
    )
    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.mobilevlm import to_checkpoint_key

    model_dir = Path(model_dir)
    weight_format, _ = weight_layout(model_dir)
    original = read_state_dict(model_dir) if original is None else original
    current = {to_checkpoint_key(k): v.cpu() for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():  # every input tensor, in the input's dtype
        state[key] = current[key].to(tensor.dtype) if key in current else tensor
    if tower_changed:
        state.update({k: v for k, v in current.items() if k.startswith(VISION_KEY_PREFIX) and k not in state})
    return save_checkpoint(state, MobileVLMConfig.from_dir(model_dir), out_dir, tokenizer_dir=model_dir,
                           weight_format=weight_format, max_shard_bytes=largest_shard_bytes(model_dir))


def lower_adapter(adapter_dir: str | Path, out_dir: str | Path, model_dir: str | Path | None = None) -> Path:
    """Write the exact PEFT LoRA form of any adapter directory (per-module ``rank_pattern``)."""
    from mobilepeft.loading import load_vlm

    spec, meta = read_adapter_spec(adapter_dir)
    model_dir = resolve_base_model(adapter_dir, meta, model_dir, "multihead lowering needs W0")
    model = load_vlm(model_dir, adapter=adapter_dir, load_tokenizer=False)
    return save_adapter(model, spec, out_dir, base_model=str(Path(model_dir).resolve()),
                        projector_trained=bool(meta.get("projector_trained")), lowered_from=spec.method,
                        nominal_rank=meta.get("nominal_rank", spec.rank))
