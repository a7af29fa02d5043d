"""DMLoRA, dropout mixture of LoRA branches (our reading of the published abstract; docs/methods.md).

K branches B_k A_k of rank r/K (sizes differ by at most one when K does not divide r), so the
branch weights cost exactly what LoRA of rank r costs, plus one scalar per layer:

    training:  y = W0 x + b0 + s_l Σ_k m_k/(1-p) · B_k A_k x,   m_k ~ Bernoulli(1-p), p = p(t)
    inference: y = W0 x + b0 + s_l Σ_k B_k A_k x

p(t) rises linearly from 0 to ``branch_drop_max`` over training (gradual branch dropout). The
learning scalar s_l starts at alpha/r and is frozen for the first half of training, then
trains at ``scalar_lr_ratio`` × the base LR. The branches are stored stacked as one LoRA pair
(``lora_A`` rows / ``lora_B`` columns grouped by branch), so lowering to LoRA is the identity
and merging uses all branches. Masks come from torch's global RNG: seeded runs (and resumed
runs, whose RNG state is checkpointed) are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobilepeft.adapters.base import AdapterLayer, BranchFactors, LoRAForm
from mobilepeft.adapters.methods.lora import lora_pair
from mobilepeft.adapters.registry import register_adapter_method
from mobilepeft.adapters.spec import AdapterSpec, MethodSettings
from mobilepeft.settings import setting

#: fraction of training during which the learning scalar stays frozen (stage 1)
SCALAR_FROZEN_FRACTION = 0.5


@dataclass
class DMLoRASettings(MethodSettings):
    branches: int = setting(4, min=1, help="dmlora: number of LoRA branches sharing --rank.")
    branch_drop_max: float = setting(0.5, min=0, max=1, max_open=True,
                                     help="dmlora: branch-drop probability reached at the end of training.")
    scalar_lr_ratio: float = setting(0.1, min=0, min_open=True,
                                     help="dmlora: LR of the per-layer learning scalar, as a fraction of --lr.")


class DMLoRALinear(AdapterLayer):

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, branches: int = 4, dropout: float = 0.0,
                 branch_drop_max: float = 0.5, scalar_lr_ratio: float = 0.1) -> None:
        super().__init__(base_layer)
        if rank < 1 or branches < 1:
            raise ValueError(f"dmlora needs rank >= 1 and branches >= 1, got rank {rank}, branches {branches}")
        if not 0.0 <= branch_drop_max < 1.0:
            raise ValueError(f"branch_drop_max must be in [0, 1), got {branch_drop_max}")
        self.rank, self.alpha = rank, alpha
        self.branches_wanted = branches
        self.branch_drop_max = branch_drop_max
        self.scalar_lr_ratio = scalar_lr_ratio
        self.drop_prob = 0.0
        self.lora_A, self.lora_B = lora_pair(self.in_features, self.out_features, rank, base_layer.weight)
        self.scalar = nn.Parameter(torch.tensor(alpha / rank, dtype=base_layer.weight.dtype,
                                                device=base_layer.weight.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.split_branches()

    def split_branches(self) -> None:
        """Group the rank units into min(K, r) branches of near-equal size (again after a resize)."""
        k = min(self.branches_wanted, self.rank)
        self.branch_sizes = [self.rank // k + (1 if i < self.rank % k else 0) for i in range(k)]
        unit_branch = [i for i, size in enumerate(self.branch_sizes) for _ in range(size)]
        self.register_buffer("_unit_branch", torch.tensor(unit_branch, device=self.lora_A.weight.device),
                             persistent=False)

    @classmethod
    def from_spec(cls, base_layer: nn.Linear, spec: AdapterSpec, rank: int, alpha: float) -> DMLoRALinear:
        s = spec.settings
        return cls(base_layer, rank, alpha, s.branches, spec.dropout, s.branch_drop_max, s.scalar_lr_ratio)

    @property
    def num_branches(self) -> int:
        return len(self.branch_sizes)

    def set_progress(self, step: int, total_steps: int) -> None:
        self.drop_prob = self.branch_drop_max * step / max(1, total_steps)
        self.scalar.requires_grad_(step >= SCALAR_FROZEN_FRACTION * total_steps)

    def lr_multipliers(self) -> dict[str, float]:
        return {"scalar": self.scalar_lr_ratio}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        hidden = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))
        if self.training and self.drop_prob > 0:
            keep = (torch.rand(self.num_branches) >= self.drop_prob).to(hidden.dtype) / (1.0 - self.drop_prob)
            hidden = hidden * keep[self._unit_branch].to(hidden.device)
        return out + self.lora_B(hidden).to(out.dtype) * self.scalar

    def to_lora(self) -> LoRAForm:
        return LoRAForm(self.lora_A.weight.detach().clone(), self.lora_B.weight.detach().clone(),
                        float(self.scalar.detach()))

    def rank_branches(self) -> list[BranchFactors]:
        return [BranchFactors("", "dmlora", self.lora_A, self.lora_B)]

    def branch_scaling(self, branch: BranchFactors) -> float:
        return float(self.scalar.detach())

    def branch_resized(self, branch: BranchFactors, rank: int) -> None:
        self.rank = rank
        self.alpha = float(self.scalar.detach()) * rank
        self.split_branches()

    def arrange_shrunk(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deal the directions out round-robin, so every branch gets strong and weak ones."""
        k, rank = self.branches_wanted, a.shape[0]
        order = torch.tensor([i for start in range(k) for i in range(start, rank, k)])
        return a[order], b[:, order]

    def describe_rank(self) -> str:
        return f"{self.rank} in {self.num_branches} branches {self.branch_sizes}"


register_adapter_method("dmlora", DMLoRASettings, DMLoRALinear)
