"""Plain LoRA (Hu et al.): y = W0 x + b0 + s · B A dropout(x), s = alpha/r (alpha/√r with rsLoRA).

Parameter names ``lora_A.weight`` (r×in) and ``lora_B.weight`` (out×r) are PEFT's, so saving is
a key rename. Initialisation follows PEFT: A kaiming-uniform(a=√5), B zero (model unchanged at
step 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobilepeft.adapters.base import AdapterLayer


def lora_scaling(rank: int, alpha: float, use_rslora: bool = False) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


class LoRALinear(AdapterLayer):
    method = "lora"

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False) -> None:
        super().__init__(base_layer)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        w = base_layer.weight
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        a = self.lora_A.weight
        return out + self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))).to(out.dtype) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def to_lora(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        return self.lora_A.weight.detach().clone(), self.lora_B.weight.detach().clone(), self.scaling
