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


#: attribute of the model holding the cross-layer parameters of every method that has them
SHARED_ATTR = "adapter_shared"


@dataclass
class BranchFactors:
    """One low-rank product s·B·A of a layer whose rank a schedule may move."""

    suffix: str  # appended to the module path: "" for a layer's only branch, ":parallel", ...
    kind: str  # recorded in the rank history
    A: nn.Linear
    B: nn.Linear
    #: where the branch reads from: the layer input, or the frozen layer's output (Hydra sequential)
    reads_base_output: bool = False


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
    override :meth:`build` to create it. Rank schedules (``schedule/``) and ``adapter info`` ask a
    layer what they need through the methods below, so neither knows any method by its class.
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

    def rank_branches(self) -> list[BranchFactors]:
        """The branches a rank schedule may resize (none: the method has no per-module rank)."""
        return []

    def branch_scaling(self, branch: BranchFactors) -> float:
        """s of ``branch``'s s·B·A."""
        return float(self.scaling)

    def branch_resized(self, branch: BranchFactors, rank: int) -> None:
        """Keep the layer's bookkeeping (rank, alpha with s fixed) in step after a schedule resized
        ``branch`` to ``rank``."""
        raise NotImplementedError(f"{self.method} has no resizable branches")

    def arrange_shrunk(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of a shrunk branch (directions by decreasing strength) in the layer's order."""
        return a, b

    def scheduled_patterns(self, spec: AdapterSpec) -> dict[str, int]:
        """Per-module entries (method setting name -> value) that a scheduled rank of this layer
        needs beyond ``rank_pattern`` for the adapter to reload with the same shapes."""
        return {}

    def describe_rank(self) -> str:
        """How ``adapter info`` shows this layer's rank."""
        return str(self.rank)

    def shared_group(self) -> tuple[str, dict[str, int]] | None:
        """The cross-layer group this layer belongs to and its sizes (``adapter info``), if any."""
        return None

    def lowered_alpha(self, form: LoRAForm) -> float:
        """Alpha of this layer's plain-LoRA form (scaling = alpha / rank)."""
        return form.scaling * form.rank

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
