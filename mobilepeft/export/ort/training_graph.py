"""Export-friendly modules for ONNX Runtime on-device training.

The phone's training step is split in two (docs/on-device-training.md):

* ``VisionEncoder`` (``mobilepeft/export/graphs/vision.py``): pixels -> image tokens, run once per photo by the deployed vision encoder
  (frozen; ONNX inference model here, the ExecuTorch ``vision_encoder`` method on a phone);
* ``TextDecoderForTraining``: token ids + those image tokens -> logits, the graph ORT
  differentiates. Only LoRA tensors (and, with ``train_projector``, the LDP projector) train.

The decoder graph is built from the model's own modules (LoRA-wrapped linears, RMSNorm, RoPE,
attention) so it computes exactly what ``MobileVLMForCausalLM`` computes, with the traps of
docs/on-device-training.md kept out of the graph: the causal + padding mask is explicit (transformers' mask
code would call ``torch.diff``, which ONNX cannot express), and logits are also emitted
flattened to ``(B*T, V)``, the only shape ORT's ``SoftmaxCrossEntropyLoss`` accepts.

Image tokens enter through the ids: each image occupies ``num_image_tokens`` consecutive
positions holding ``IMAGE_TOKEN_INDEX`` (-200); position k of that span takes image token k.
This keeps one graph valid for any prompt layout and needs no extra index input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mobilepeft.export.graphs.vision import embed_with_image
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM

TEXT_INPUTS = ("input_ids", "attention_mask")
IMAGE_EMBEDS = "image_embeds"
IMAGE_FEATURES = "image_features"
HIDDEN_STATES = "hidden_states"
LOGITS = "logits"
FLAT_LOGITS = "flat_logits"
LABELS = "labels"


def run_layers(decoder: nn.Module, layers: Sequence[nn.Module], hidden: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """``layers`` of the LLaMA ``decoder`` over ``hidden`` [B,T,D] with an explicit causal + padding mask."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    # finfo.min rather than -inf: a fully masked row (left padding) stays finite.
    mask = torch.where(allowed, torch.zeros((), dtype=hidden.dtype),
                       torch.full((), torch.finfo(hidden.dtype).min, dtype=hidden.dtype))
    rope = decoder.rotary_emb(hidden, positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope)
    return hidden


class TextDecoderForTraining(nn.Module):
    """``(input_ids, attention_mask, image input) -> (logits [B,T,V], flat_logits [B*T,V])``.

    The image input is ``image_embeds`` [B, P, hidden] (projected image tokens) or, when the
    projector trains on the device, ``image_features`` [B, N, mm_hidden] (CLIP features) that
    the graph projects itself. Text-only rows carry no -200 positions; their image input is
    ignored (any values, e.g. zeros).

    With ``frozen_layers`` > 0 (``--train-layers``) the graph starts after that many decoder layers:
    its input is their output, ``hidden_states`` [B, T, hidden], which :class:`DecoderPrefix` computes
    once per sample outside the training graph (docs/on-device-training.md, "Training the top layers").
    """

    def __init__(self, model: MobileVLMForCausalLM, *, train_projector: bool, frozen_layers: int = 0) -> None:
        super().__init__()
        if frozen_layers and train_projector:
            raise ValueError("the projector runs before the frozen layers: it cannot train in a split bundle")
        self.llm = model.llm
        self.mm_projector = model.mm_projector if train_projector else None
        self.frozen_layers = frozen_layers

    @property
    def image_input(self) -> str:
        return IMAGE_FEATURES if self.mm_projector is not None else IMAGE_EMBEDS

    @property
    def inputs(self) -> tuple[str, ...]:
        """The graph's input names, in order."""
        return (HIDDEN_STATES, "attention_mask") if self.frozen_layers else (*TEXT_INPUTS, self.image_input)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.llm.model
        if self.frozen_layers:
            hidden, attention_mask = args
        else:
            input_ids, attention_mask, image = args
            image_embeds = self.mm_projector(image) if self.mm_projector is not None else image
            hidden = embed_with_image(decoder.embed_tokens.weight, input_ids, image_embeds)
        hidden = run_layers(decoder, decoder.layers[self.frozen_layers:], hidden, attention_mask)
        logits = self.llm.lm_head(decoder.norm(hidden))
        return logits, logits.reshape(-1, logits.shape[-1])


class DecoderPrefix(nn.Module):
    """``(input_ids, attention_mask, image_embeds) -> hidden_states`` after the first ``frozen_layers``
    decoder layers (their adapter included): the frozen part of a split bundle, an inference model."""

    def __init__(self, model: MobileVLMForCausalLM, frozen_layers: int) -> None:
        super().__init__()
        self.llm = model.llm
        self.frozen_layers = frozen_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        decoder = self.llm.model
        hidden = embed_with_image(decoder.embed_tokens.weight, input_ids, image_embeds)
        return run_layers(decoder, decoder.layers[: self.frozen_layers], hidden, attention_mask)


class _HardSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class _HardSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


@contextlib.contextmanager
def differentiable_activations(module: nn.Module) -> Iterator[None]:
    """Temporarily replace Hardswish/Hardsigmoid (the V1 LDP projector's) by the same maths in
    Clip/Mul/Div: ONNX exports them as HardSwish/HardSigmoid, which have no ORT gradient."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Hardswish | nn.Hardsigmoid):
                swapped.append((parent, name, child))
                setattr(parent, name, _HardSwish() if isinstance(child, nn.Hardswish) else _HardSigmoid())
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
