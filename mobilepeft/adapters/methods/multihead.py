"""Hydra multi-head adapter (Kim et al.): a parallel and a sequential low-rank branch.

    h = W0 x + b0
    y = h + s·Bp Ap x + s·Bs As h          (s = alpha / (rp + rs), shared by both branches)

The parallel branch is LoRA; the sequential one re-mixes the pre-trained output features. Both
fold into the weight: W' = (I + s·Bs As) W0 + s·Bp Ap, b' = b0 + s·Bs As b0, and lower exactly
to a LoRA of rank rp + rs with A' = [Ap; As W0], B' = [Bp, Bs]. Down projections (A) are
kaiming-uniform and up projections (B) zero, as in the original, so the model is unchanged at
step 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mobilepeft.adapters.base import AdapterLayer, BranchFactors, LoRAForm
from mobilepeft.adapters.methods.lora import lora_pair
from mobilepeft.adapters.registry import register_adapter_method
from mobilepeft.adapters.spec import AdapterSpec, MethodSettings
from mobilepeft.adapters.targets import pattern_lookup, pattern_path
from mobilepeft.errors import UserError
from mobilepeft.settings import setting


@dataclass
class MultiHeadSettings(MethodSettings):
    rank_parallel: int | None = setting(None, min=0, help="multihead: rank of the parallel branch (default: half of --rank).")
    rank_sequential: int | None = setting(None, min=0, help="multihead: rank of the sequential branch (default: the rest of --rank).")
    #: per module: sequential-branch rank (parallel = that module's rank minus it); set by rank schedules
    sequential_rank_pattern: dict[str, int] = field(default_factory=dict)

    def resolve(self, spec: AdapterSpec) -> None:
        """Both branch ranks given (or one and --rank) set the total rank."""
        if self.rank_parallel is None and self.rank_sequential is None:
            return
        par = self.rank_parallel if self.rank_parallel is not None else spec.rank - self.rank_sequential
        seq = self.rank_sequential if self.rank_sequential is not None else spec.rank - par
        if par < 0 or seq < 0 or par + seq < 1:
            raise UserError(f"branch ranks must be >= 0 with a positive sum (got {par} + {seq})",
                            field="rank_parallel", hint="--rank-parallel + --rank-sequential sets the total rank")
        self.rank_parallel, self.rank_sequential, spec.rank = par, seq, par + seq

    def rank_shares(self, rank: int) -> tuple[int, ...]:
        return self.branch_ranks(rank, rank)

    def branch_ranks(self, rank: int, nominal: int) -> tuple[int, int]:
        """(parallel, sequential) ranks of a module whose total rank is ``rank`` (``nominal``: --rank)."""
        if self.rank_parallel is not None and self.rank_sequential is not None and rank == nominal:
            return self.rank_parallel, self.rank_sequential
        if self.rank_parallel is not None and self.rank_sequential is not None:
            par = round(rank * self.rank_parallel / (self.rank_parallel + self.rank_sequential))
        else:
            par = (rank + 1) // 2
        par = min(max(par, 1 if rank > 1 else rank), rank)
        return par, rank - par


class MultiHeadLinear(AdapterLayer):

    def __init__(self, base_layer: nn.Linear, rank_parallel: int, rank_sequential: int, alpha: float,
                 dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        if rank_parallel < 0 or rank_sequential < 0 or rank_parallel + rank_sequential < 1:
            raise ValueError(f"multihead ranks must be >= 0 with a positive sum, got {rank_parallel}+{rank_sequential}")
        self.rank_parallel, self.rank_sequential = rank_parallel, rank_sequential
        self.alpha = alpha
        self.scaling = alpha / (rank_parallel + rank_sequential)
        w = base_layer.weight
        self.lora_A, self.lora_B = lora_pair(self.in_features, self.out_features, rank_parallel, w)
        self.seq_A, self.seq_B = lora_pair(self.out_features, self.out_features, rank_sequential, w)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def build(cls, model: nn.Module, targets: dict[str, nn.Linear], spec: AdapterSpec,
              ranks: dict[str, int], alphas: dict[str, float]) -> dict[str, AdapterLayer]:
        layers: dict[str, AdapterLayer] = {}
        for path, linear in targets.items():
            seq = pattern_lookup(spec.settings.sequential_rank_pattern, pattern_path(path))
            par, seq = (spec.settings.branch_ranks(ranks[path], spec.rank) if seq is None
                        else (ranks[path] - int(seq), int(seq)))
            layers[path] = cls(linear, par, seq, alphas[path], spec.dropout)
        return layers

    @property
    def rank(self) -> int:
        return self.rank_parallel + self.rank_sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        if self.merged:
            return h
        dt = self.lora_A.weight.dtype
        delta = self.seq_B(self.seq_A(self.lora_dropout(h.to(dt))))
        if self.rank_parallel:
            delta = delta + self.lora_B(self.lora_A(self.lora_dropout(x.to(dt))))
        return h + delta.to(h.dtype) * self.scaling

    def to_lora(self) -> LoRAForm:
        return self._form(self.base_layer.weight, self.base_layer.bias)

    def rank_branches(self) -> list[BranchFactors]:
        return [BranchFactors(":parallel", "parallel", self.lora_A, self.lora_B),
                BranchFactors(":sequential", "sequential", self.seq_A, self.seq_B, reads_base_output=True)]

    def branch_resized(self, branch: BranchFactors, rank: int) -> None:
        if branch.kind == "parallel":
            self.rank_parallel = rank
        else:
            self.rank_sequential = rank
        self.alpha = self.scaling * (self.rank_parallel + self.rank_sequential)

    def scheduled_patterns(self, spec: AdapterSpec) -> dict[str, int]:
        default = spec.settings.branch_ranks(self.rank, spec.rank)
        if (self.rank_parallel, self.rank_sequential) == default:
            return {}
        return {"sequential_rank_pattern": self.rank_sequential}

    def describe_rank(self) -> str:
        return f"parallel {self.rank_parallel} + sequential {self.rank_sequential}"

    @torch.no_grad()
    def _form(self, w0: torch.Tensor, b0: torch.Tensor | None) -> LoRAForm:
        a_s, b_s = self.seq_A.weight, self.seq_B.weight
        a = torch.cat([self.lora_A.weight, a_s @ w0.to(a_s.dtype)], dim=0)
        b = torch.cat([self.lora_B.weight, b_s], dim=1)
        bias = None if b0 is None else self.scaling * (b_s @ (a_s @ b0.to(a_s.dtype)))
        return LoRAForm(a.detach().clone(), b.detach().clone(), self.scaling, bias)

    def _lora_form_while_merged(self) -> LoRAForm:
        # The base now holds W' = (I + s·Bs As) W0 + s·Bp Ap; recover W0 (and b0) with Woodbury:
        # (I + U V)^-1 = I - U (I + V U)^-1 V, U = s·Bs (out×rs), V = As (rs×out).
        u, v = self.scaling * self.seq_B.weight, self.seq_A.weight
        core = torch.linalg.inv(torch.eye(v.shape[0], dtype=v.dtype) + v @ u)

        def solve(m: torch.Tensor) -> torch.Tensor:
            return m - u @ (core @ (v @ m))

        w_merged = self.base_layer.weight.to(v.dtype)
        w0 = solve(w_merged - self.scaling * self.lora_B.weight @ self.lora_A.weight)
        b = self.base_layer.bias
        b0 = None if b is None else solve(b.to(v.dtype)[:, None])[:, 0]
        return self._form(w0, b0)


register_adapter_method("multihead", MultiHeadSettings, MultiHeadLinear)
