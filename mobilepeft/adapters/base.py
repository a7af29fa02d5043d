"""The interface every adapter layer implements.

An adapter wraps one frozen ``nn.Linear`` (W0, optional b0). Whatever its internal form, it
must merge exactly into W0 and lower exactly to a plain LoRA pair of some rank: that LoRA is
the canonical form PEFT, the on-device training artifacts and the mobile runtimes consume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from mobilepeft.adapters.spec import AdapterSpec


@dataclass
class LoRAForm:
    """ΔW = scaling·B·A and Δb = bias (None when the method leaves the bias alone)."""

    A: torch.Tensor  # r × in
    B: torch.Tensor  # out × r
    scaling: float
    bias: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta_weight(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scaling


class AdapterLayer(nn.Module):
    """Base class: holds ``base_layer`` (frozen) and tracks whether the delta is merged in.

    Subclasses implement ``from_spec``, ``forward`` (unmerged) and ``to_lora``; merging and ΔW
    follow from those. Methods with shared state across layers (AdaRing)
    override :meth:`build` to create it.
    """

    method: str = ""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.merged = False

    @classmethod
    def build(cls, model: nn.Module, targets: dict[str, nn.Linear], spec: AdapterSpec,
              ranks: dict[str, int], alphas: dict[str, float]) -> dict[str, AdapterLayer]:
        """One layer per target path (``ranks``/``alphas`` already resolved per module)."""
        return {path: cls.from_spec(linear, spec, ranks[path], alphas[path]) for path, linear in targets.items()}

    @classmethod
    def from_spec(cls, base_layer: nn.Linear, spec: AdapterSpec, rank: int, alpha: float) -> AdapterLayer:
        raise NotImplementedError

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def to_lora(self) -> LoRAForm:
        """Exact plain-LoRA form of the current (unmerged) adapter."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out×in) such that the adapted layer equals Linear(W0 + ΔW, b0 + Δb)."""
        return self.to_lora().delta_weight()

    def own_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Adapter parameters held by this layer (shared ones live elsewhere)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("base_layer.")]

    def trainable_parameters(self) -> int:
        """This layer's own adapter parameters (see ``shared_parameters`` for cross-layer ones)."""
        return sum(p.numel() for _, p in self.own_parameters())

    def lr_multipliers(self) -> dict[str, float]:
        """Own parameter name -> learning-rate multiplier, for parameters not at the base LR."""
        return {}

    def set_progress(self, step: int, total_steps: int) -> None:
        """Called by the trainer before each optimizer step; for methods with training schedules."""

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        form = self.to_lora()
        w = self.base_layer.weight
        w += form.delta_weight().to(w.dtype)
        if form.bias is not None:
            self.base_layer.bias += form.bias.to(w.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        form = self._lora_form_while_merged()
        w = self.base_layer.weight
        w -= form.delta_weight().to(w.dtype)
        if form.bias is not None:
            self.base_layer.bias -= form.bias.to(w.dtype)
        self.merged = False

    def _lora_form_while_merged(self) -> LoRAForm:
        """The LoRA form to subtract on unmerge; methods whose ΔW depends on W0 override this."""
        return self.to_lora()
