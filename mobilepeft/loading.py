"""``load_vlm``: the one entry point from a checkpoint directory (+ adapter) to a model."""

from __future__ import annotations

from pathlib import Path

import torch

from mobilepeft.models.checkpoint import load_weights_into, read_state_dict
from mobilepeft.models.config import MobileVLMConfig
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM
from mobilepeft.models.tokenizer import Tokenizer


def load_vlm(path: str | Path, adapter: str | Path | None = None, dtype: torch.dtype = torch.float32,
             *, load_tokenizer: bool = True, state: dict[str, torch.Tensor] | None = None) -> MobileVLMForCausalLM:
    """Load a MobileVLM checkpoint directory (V1 or V2), optionally with an adapter directory.

    Every base weight is frozen; adapter parameters (if any) are left trainable so the result
    can be trained further. Raises :class:`~mobilepeft.errors.UserError` naming the offending
    file/tensor when the checkpoint does not match its config. ``state``: the directory's
    tensors if the caller has already read them (they are copied, not modified).
    """
    path = Path(path)
    config = MobileVLMConfig.from_dir(path)
    model = MobileVLMForCausalLM(config)
    load_weights_into(model, read_state_dict(path) if state is None else state, config, path)
    model.requires_grad_(False)
    if load_tokenizer:
        model.tokenizer = Tokenizer(path)
    if adapter is not None:
        from mobilepeft.adapters.files import load_adapter

        load_adapter(model, adapter)
    model.to(dtype)
    model.eval()
    return model
