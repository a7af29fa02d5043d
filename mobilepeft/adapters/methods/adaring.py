"""AdaRing: cross-layer tensor-ring adapters (our reading of the published abstract; docs/methods.md).

All target modules of one type and shape across the L layers (e.g. every ``q_proj``) form a
group that shares two ring cores; each layer owns only a small slice Z_l:

    ΔW_l[i, j] = s · Tr(G_out[:, i, :] · G_in[:, j, :] · Z_l)
    G_out: r1×out×r2,  G_in: r2×in×r3,  Z_l: r3×r1 (zero-initialised),  s = alpha / (r1·r2)

Parameters per group: r1·out·r2 + r2·in·r3 + L·r3·r1. The forward never builds ΔW:
H = x·G_in (r2×r3 per token), M = H·Z_l, y_i = Σ_ab G_out[a, i, b]·M[b, a]. Writing that last
contraction as a matrix product shows ΔW_l = s·B·A_l with B = G_out as an out×(r1·r2) matrix and
A_l[(a,b), j] = Σ_c G_in[b, j, c]·Z_l[c, a]: an exact LoRA of rank r1·r2, no SVD needed.
Ring ranks are equal inside a group (r1 = r2 = r3 = R, ``ring_rank``), and may differ between
groups (``ring_rank_pattern``, keyed by module type) — the "diverse, rank-driven" part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mobilepeft.adapters.base import SHARED_ATTR, AdapterLayer, LoRAForm
from mobilepeft.adapters.registry import register_adapter_method
from mobilepeft.adapters.spec import AdapterSpec, MethodSettings
from mobilepeft.adapters.targets import LLM_ROOT, pattern_lookup
from mobilepeft.errors import UserError
from mobilepeft.settings import setting


@dataclass
class AdaRingSettings(MethodSettings):
    #: ring ranks are per group of modules, so a per-module rank schedule has nothing to move
    schedulable: ClassVar[bool] = False
    #: the ring ranks, not --rank, set the size
    uses_rank: ClassVar[bool] = False

    ring_rank: int = setting(4, min=1, help="adaring: ring rank of the shared cores.")
    ring_rank_pattern: dict[str, int] = setting(
        factory=dict, cli="key_values", help="adaring: per module type ring ranks, e.g. 'down_proj=6,q_proj=2'.")

    def resolve(self, spec: AdapterSpec) -> None:
        if any(v < 1 for v in self.ring_rank_pattern.values()):
            raise UserError(f"ring ranks must be >= 1 (got {self.ring_rank_pattern})", field="ring_rank_pattern")


class RingCores(nn.Module):
    """The shared cores of one group of same-shaped modules."""

    def __init__(self, in_features: int, out_features: int, ring_rank: int, like: torch.Tensor) -> None:
        super().__init__()
        r = ring_rank
        self.ring_rank = r
        self.in_features, self.out_features = in_features, out_features
        kw = dict(device=like.device, dtype=like.dtype)
        # Kaiming-style bounds by each contraction's fan-in: in for G_in, r1·r2 for G_out.
        self.g_in = nn.Parameter(torch.empty(r, in_features, r, **kw).uniform_(-1, 1) / math.sqrt(in_features))
        self.g_out = nn.Parameter(torch.empty(r, out_features, r, **kw).uniform_(-1, 1) / r)

    def out_matrix(self) -> torch.Tensor:
        """G_out as out×(r1·r2), column index a·r2 + b."""
        return self.g_out.permute(1, 0, 2).reshape(self.out_features, -1)

    def in_matrix(self) -> torch.Tensor:
        """G_in as in×(r2·r3), column index b·r3 + c."""
        return self.g_in.permute(1, 0, 2).reshape(self.in_features, -1)


class AdaRingLinear(AdapterLayer):

    def __init__(self, base_layer: nn.Linear, cores: RingCores, alpha: float, dropout: float = 0.0,
                 group: str = "") -> None:
        super().__init__(base_layer)
        self.group = group
        if (cores.in_features, cores.out_features) != (self.in_features, self.out_features):
            raise ValueError("ring cores do not match the layer's shape")
        self.__dict__["cores"] = cores  # shared: registered once on the model, not under every layer
        r = cores.ring_rank
        self.alpha = alpha
        self.scaling = alpha / (r * r)
        w = base_layer.weight
        self.ring_slice = nn.Parameter(torch.zeros(r, r, device=w.device, dtype=w.dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def build(cls, model: nn.Module, targets: dict[str, nn.Linear], spec: AdapterSpec,
              ranks: dict[str, int], alphas: dict[str, float]) -> dict[str, AdapterLayer]:
        shared = getattr(model, SHARED_ATTR, None)
        if shared is None:
            shared = nn.ModuleDict()
            model.add_module(SHARED_ATTR, shared)
        layers: dict[str, AdapterLayer] = {}
        for path, linear in targets.items():
            key = group_key(path)
            if key in shared and (shared[key].in_features, shared[key].out_features) != (
                    linear.in_features, linear.out_features):
                key = f"{key}_{linear.out_features}x{linear.in_features}"
            if key not in shared:
                leaf = path.rpartition(".")[2]
                r = int(pattern_lookup(spec.settings.ring_rank_pattern, leaf) or spec.settings.ring_rank)
                shared[key] = RingCores(linear.in_features, linear.out_features, r, linear.weight)
            layers[path] = cls(linear, shared[key], alphas[path], spec.dropout, group=key)
        return layers

    @property
    def cores(self) -> RingCores:
        return self.__dict__["cores"]

    @property
    def rank(self) -> int:
        return self.cores.ring_rank ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        r = self.cores.ring_rank
        z = self.ring_slice
        h = self.lora_dropout(x.to(z.dtype)) @ self.cores.in_matrix()   # (..., r2·r3)
        m = h.unflatten(-1, (r, r)) @ z                                  # (..., r2, r1): M[b, a]
        y = m.transpose(-1, -2).flatten(-2) @ self.cores.out_matrix().T  # Σ_ab G_out[a, i, b] M[b, a]
        return out + y.to(out.dtype) * self.scaling

    def to_lora(self) -> LoRAForm:
        c, z = self.cores, self.ring_slice
        a = torch.einsum("bjc,ca->abj", c.g_in, z).reshape(c.ring_rank ** 2, c.in_features)
        return LoRAForm(a.detach().clone(), c.out_matrix().detach().clone(), self.scaling)

    def describe_rank(self) -> str:
        return f"ring {self.cores.ring_rank}"

    def shared_group(self) -> tuple[str, dict[str, int]]:
        return self.group, {"ring_rank": self.cores.ring_rank, "in_features": self.in_features,
                            "out_features": self.out_features}


def group_key(path: str) -> str:
    """``q_proj`` for LLM modules, ``vision_q_proj`` for the CLIP tower (a shape suffix is added
    by ``build`` if one type comes in two shapes)."""
    leaf = path.rpartition(".")[2]
    return leaf if path.startswith(LLM_ROOT) else f"vision_{leaf}"


register_adapter_method("adaring", AdaRingSettings, AdaRingLinear)
