"""The interface every adapter layer implements.

An adapter wraps one frozen ``nn.Linear`` (W0, optional b0). Whatever its internal form, it
must merge exactly into W0 and lower exactly to a plain LoRA pair of some rank: that LoRA is
the canonical form PEFT, the on-device training artifacts and the mobile runtimes consume.
"""

from __future__ import annotations

import torch
from torch import nn


class AdapterLayer(nn.Module):
    """Base class: holds ``base_layer`` (frozen) and tracks whether the delta is merged in."""

    method: str = ""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out×in) such that the adapted layer equals Linear(W0 + ΔW, b0)."""
        raise NotImplementedError

    def to_lora(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Exact plain-LoRA form ``(A [r×in], B [out×r], scaling)`` with ΔW = scaling·B·A."""
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("base_layer."))

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.base_layer.weight
            w += self.delta_weight().to(w.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base_layer.weight
            w -= self.delta_weight().to(w.dtype)
            self.merged = False
