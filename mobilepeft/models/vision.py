"""CLIP vision tower as MobileVLM uses it.

MobileVLM's ``CLIPVisionTower`` holds a transformers ``CLIPVisionModel`` as ``.vision_tower``
and that model's weights live under ``vision_model.*`` in checkpoints, so the module path
``vision_tower.vision_tower.vision_model.*`` reproduces the checkpoint keys exactly.
Features are the hidden state after encoder layer ``select_layer`` (``-2``: second to last),
without post-layernorm and without the CLS token. Layers after the selected one are never
run: they would cost a full transformer layer per image for an output nobody reads.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class _VisionModelHolder(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class CLIPVisionTower(nn.Module):
    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = _VisionModelHolder(config)
        n_states = config.num_hidden_layers + 1  # hidden_states[0] is the embedding output
        if not -n_states <= select_layer < n_states:
            raise ValueError(f"mm_vision_select_layer {select_layer} out of range for {n_states - 1} layers")
        self.num_layers_run = select_layer % n_states

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N,3,S,S] -> patch features [N, (S/patch)^2, hidden]."""
        clip = self.vision_tower.vision_model
        dtype = clip.embeddings.patch_embedding.weight.dtype
        hidden = clip.pre_layrnorm(clip.embeddings(pixel_values.to(dtype)))
        for layer in clip.encoder.layers[: self.num_layers_run]:
            hidden = layer(hidden, None)
        return hidden[:, 1:]
