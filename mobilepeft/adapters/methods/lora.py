"""Plain LoRA (Hu et al.): y = W0 x + b0 + s · B A dropout(x), s = alpha/r (alpha/√r with rsLoRA).

Parameter names ``lora_A.weight`` (r×in) and ``lora_B.weight`` (out×r) are PEFT's, so saving is
a key rename. Initialisation follows PEFT: A kaiming-uniform(a=√5), B zero (model unchanged at
step 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mobilepeft.adapters.base import AdapterLayer, BranchFactors, LoRAForm
from mobilepeft.adapters.registry import register_adapter_method
from mobilepeft.adapters.spec import AdapterSpec, MethodSettings


@dataclass
class LoRASettings(MethodSettings):
    """Plain LoRA needs nothing beyond the shared settings (rank, alpha, dropout, rsLoRA)."""


def lora_scaling(rank: int, alpha: float, use_rslora: bool = False) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def lora_pair(in_features: int, out_features: int, rank: int, like: torch.Tensor,
              bias: bool = False) -> tuple[nn.Linear, nn.Linear]:
    """A (kaiming-uniform, PEFT's init) and B (zero, with a zero bias if asked) as linears; rank 0
    gives empty ones."""
    a = nn.Linear(in_features, rank, bias=False, device=like.device, dtype=like.dtype)
    b = nn.Linear(rank, out_features, bias=bias, device=like.device, dtype=like.dtype)
    if rank > 0:
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        nn.init.zeros_(b.weight)
    if bias:
        nn.init.zeros_(b.bias)
    return a, b


class LoRALinear(AdapterLayer):

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, lora_bias: bool = False) -> None:
        super().__init__(base_layer)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        # lora_bias (PEFT's name): B carries a bias, so a lowered adapter can shift b0 too.
        self.lora_A, self.lora_B = lora_pair(self.in_features, self.out_features, rank, base_layer.weight,
                                             bias=lora_bias)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_spec(cls, base_layer: nn.Linear, spec: AdapterSpec, rank: int, alpha: float) -> LoRALinear:
        return cls(base_layer, rank, alpha, spec.dropout, spec.use_rslora, spec.lora_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        a = self.lora_A.weight
        return out + self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))).to(out.dtype) * self.scaling

    def to_lora(self) -> LoRAForm:
        b = self.lora_B
        bias = None if b.bias is None else b.bias.detach() * self.scaling
        return LoRAForm(self.lora_A.weight.detach().clone(), b.weight.detach().clone(), self.scaling, bias)

    def rank_branches(self) -> list[BranchFactors]:
        return [BranchFactors("", "lora", self.lora_A, self.lora_B)]

    def branch_resized(self, branch: BranchFactors, rank: int) -> None:
        self.rank = rank
        self.alpha = self.scaling * (math.sqrt(rank) if self.use_rslora else rank)

    def lowered_alpha(self, form: LoRAForm) -> float:
        return self.alpha  # already LoRA: keeps rsLoRA's alpha/sqrt(r) as written


register_adapter_method("lora", LoRASettings, LoRALinear)
