"""The graphs every exporter shares: the frozen vision encoder and how image tokens join the text.

Each image occupies ``num_image_tokens`` consecutive positions holding ``IMAGE_TOKEN_INDEX``
(-200) in the ids; position k of that span takes image token k. One graph is then valid for any
prompt layout and needs no extra index input.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilepeft.models.mobilevlm import MobileVLMForCausalLM
from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX


def embed_with_image(embedding: torch.Tensor, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Token embeddings of ``input_ids`` [B,T], with image token k at the k-th ``IMAGE_TOKEN_INDEX``
    position of each row (``image_embeds`` [B,P,D]; a whole image span lies in one call)."""
    is_image = input_ids == IMAGE_TOKEN_INDEX
    tokens = torch.nn.functional.embedding(input_ids.clamp(min=0), embedding)
    slot = (is_image.long().cumsum(-1) - 1).clamp(0, image_embeds.shape[1] - 1)
    picked = torch.gather(image_embeds.to(tokens.dtype), 1, slot[..., None].expand(-1, -1, tokens.shape[-1]))
    return torch.where(is_image[..., None], picked, tokens)


class VisionEncoder(nn.Module):
    """``pixel_values [B,3,S,S] -> image_embeds [B,P,hidden]`` (or CLIP features without the projector)."""

    def __init__(self, model: MobileVLMForCausalLM, *, include_projector: bool) -> None:
        super().__init__()
        self.vision_tower = model.vision_tower
        self.mm_projector = model.mm_projector if include_projector else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.vision_tower(pixel_values)
        return self.mm_projector(features) if self.mm_projector is not None else features
