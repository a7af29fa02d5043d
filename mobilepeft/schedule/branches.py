"""Rank-bearing branches: the (A, B) pairs a rank schedule sizes, and function-preserving resizes.

A branch is one low-rank product s·B·A inside an adapter layer, as the layer reports it
(``AdapterLayer.rank_branches``): LoRA and DMLoRA layers have one (DMLoRA's K branches are
stacked in one pair and re-split after a resize), a Hydra multihead layer has two (``parallel``
on the layer input, ``sequential`` on the pre-trained output). AdaRing has no per-module rank to
move (its ring ranks are per group), so schedules refuse it.

Resizing keeps the layer's output unchanged at the moment it happens:
- shrink: ΔW = s·B·A is refactored by SVD and truncated, i.e. replaced by its best rank-r'
  approximation (Eckart–Young), as A = c·Vᵀ (c: A's typical row norm, kept so B's learning
  speed does not change) and B = U·Σ/(s·c);
- grow: the existing rows/columns stay as they are and new rows of A point along given
  directions (the gradient's top right-singular vectors) with zero columns in B.
Scaling s stays fixed (alpha follows the rank), so learning dynamics do not jump.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from mobilepeft.adapters.base import AdapterLayer, BranchFactors
from mobilepeft.adapters.inject import adapter_layers
from mobilepeft.adapters.targets import LLM_ROOT
from mobilepeft.errors import UserError


@dataclass
class RankBranch:
    name: str  # module path, plus the layer's suffix (":parallel" / ":sequential" for multihead)
    layer: AdapterLayer
    factors: BranchFactors
    group: str  # modality: "llm" or "vision"
    block: int  # transformer block index inside its group
    module_type: str  # q_proj, ..., fc2
    resized_from: tuple[nn.Parameter, nn.Parameter] | None = None  # (A, B) before the last resize

    @property
    def A(self) -> nn.Linear:
        return self.factors.A

    @property
    def B(self) -> nn.Linear:
        return self.factors.B

    @property
    def kind(self) -> str:
        return self.factors.kind

    @property
    def reads_base_output(self) -> bool:
        return self.factors.reads_base_output

    @property
    def rank(self) -> int:
        return self.A.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.A.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.B.weight.shape[0]

    @property
    def cost(self) -> int:
        """Parameters per rank unit."""
        return self.in_features + self.out_features

    @property
    def scaling(self) -> float:
        return self.layer.branch_scaling(self.factors)

    @property
    def max_rank(self) -> int:
        return min(self.in_features, self.out_features)

    def delta(self) -> torch.Tensor:
        """The branch's ΔW: s·B·A (out × in)."""
        with torch.no_grad():
            return self.scaling * (self.B.weight @ self.A.weight)


def branch_svd(branch: RankBranch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ΔW = s·B·A from the factors (two QRs and an r×r SVD), never of out×in itself:
    returns U (out×r), σ (r), V (in×r)."""
    with torch.no_grad():
        qb, rb = torch.linalg.qr(branch.B.weight.double())
        qa, ra = torch.linalg.qr(branch.A.weight.double().T)
        us, sig, vsh = torch.linalg.svd(branch.scaling * rb @ ra.T)
        return qb @ us, sig, qa @ vsh.T


def collect_branches(model: nn.Module) -> dict[str, RankBranch]:
    """Every rank-bearing branch of the model's adapters, in module order."""
    branches: dict[str, RankBranch] = {}
    for path, layer in adapter_layers(model).items():
        group = "llm" if path.startswith(LLM_ROOT) else "vision"
        found = re.search(r"layers\.(\d+)\.", path)
        block = int(found.group(1)) if found else 0
        module_type = path.rpartition(".")[2]
        factors = layer.rank_branches()
        for f in factors:
            name = path + f.suffix
            branches[name] = RankBranch(name, layer, f, group=group, block=block, module_type=module_type)
        if not factors:
            raise UserError(f"rank schedules need rank-bearing adapters; {layer.method!r} has none",
                            field="schedule", hint=f"use --schedule fixed with --adapter {layer.method} (docs/hydra.md)")
    return branches


@torch.no_grad()
def resize_branch(branch: RankBranch, new_rank: int, grow_directions: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> str:
    """Resize in place, preserving the layer's output; returns "shrink", "grow" or "same".

    ``grow_directions`` (k × in, orthonormal rows) are used for new rows of A first; any further
    rows get random directions orthogonal to the existing ones.
    """
    old = branch.rank
    if new_rank == old:
        return "same"
    a, b = branch.A.weight, branch.B.weight
    if new_rank < old:
        u, sig, v = branch_svd(branch)
        # A keeps its typical row norm c (its scale sets how fast B learns); B carries Σ.
        c = float(a.norm(dim=1).median().clamp_min(1e-8))
        new_b = (u[:, :new_rank] * sig[:new_rank] / (branch.scaling * c)).to(b.dtype)
        new_a = (v[:, :new_rank].T * c).to(a.dtype)
        new_a, new_b = branch.layer.arrange_shrunk(new_a, new_b)
        kind = "shrink"
    else:
        extra = new_rank - old
        dirs = _new_directions(a, extra, grow_directions, generator)
        norm = a.norm(dim=1).median()  # new rows on the scale of the existing ones
        new_a = torch.cat([a, dirs.to(a.device, a.dtype) * norm], dim=0)
        new_b = torch.cat([b, torch.zeros(b.shape[0], extra, dtype=b.dtype, device=b.device)], dim=1)
        kind = "grow"
    _set_factors(branch, new_a, new_b)
    return kind


def _new_directions(a: torch.Tensor, k: int, given: torch.Tensor | None,
                    generator: torch.Generator | None) -> torch.Tensor:
    """``k`` unit rows orthogonal to A's row space and to each other: given ones first, then random
    (on CPU, where the generator and the measured directions live)."""
    q = torch.linalg.qr(a.T.to(torch.float64).cpu())[0]  # in × r, orthonormal basis of A's rows
    cands = torch.randn(k + 4, a.shape[1], generator=generator, dtype=torch.float64)
    if given is not None:
        cands = torch.cat([given.to(torch.float64), cands])
    rows: list[torch.Tensor] = []
    for v in cands:
        v = v - q @ (q.T @ v)
        for r in rows:
            v = v - r * (r @ v)
        if v.norm() > 1e-6:
            rows.append(v / v.norm())
        if len(rows) == k:
            break
    return torch.stack(rows)


def swap_in_optimizer(optimizer: torch.optim.Optimizer, branch: RankBranch, kind: str, old_rank: int,
                      moments: str = "tensor") -> None:
    """Point the optimizer at a resized branch's new parameters, with moments that do not jolt them.

    After a growth the old entries keep their moments. Entries with no history (all of them
    after a shrink, whose SVD changed the basis; the new ones after a growth) get a zero first
    moment and a typical second moment, and the step count is kept: a plain restart (m = v = 0)
    would make their first updates full-size ±lr steps (or ~3×lr for v = 0 with an old step
    count) on every entry at once. The typical second moment is, with ``moments="tensor"``, the
    tensor's mean; with ``"axis"``, the mean along the rank axis only, which a change of basis
    does not touch: A (rank × in) keeps one value per input feature and B (out × rank) one per
    output feature, so features whose gradients are large (or small) keep their step size.
    """
    for old, new, rows in ((branch.resized_from[0], branch.A.weight, True),
                           (branch.resized_from[1], branch.B.weight, False)):
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = optimizer.state.pop(old, None)
        if not state:
            continue
        m = torch.zeros_like(new)
        if moments == "axis":
            v = state["exp_avg_sq"].mean(dim=0 if rows else 1, keepdim=True).expand_as(new).clone()
        else:
            v = torch.full_like(new, float(state["exp_avg_sq"].mean()))
        if kind == "grow":
            keep = (slice(0, old_rank),) if rows else (slice(None), slice(0, old_rank))
            m[keep], v[keep] = state["exp_avg"], state["exp_avg_sq"]
        optimizer.state[new] = {**state, "exp_avg": m, "exp_avg_sq": v}


@torch.no_grad()
def reinit_branch(branch: RankBranch, new_rank: int, generator: torch.Generator | None = None) -> None:
    """A fresh branch of ``new_rank`` (A kaiming-uniform as PEFT initialises it, B zero): for
    allocations made before training, and to give a resumed model its checkpoint's shapes."""
    a, b = branch.A.weight, branch.B.weight
    bound = 1.0 / math.sqrt(branch.in_features)  # kaiming_uniform_(a=√5)
    new_a = torch.empty(new_rank, branch.in_features, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    _set_factors(branch, new_a.to(a.dtype), torch.zeros(b.shape[0], new_rank, dtype=b.dtype))


def _set_factors(branch: RankBranch, new_a: torch.Tensor, new_b: torch.Tensor) -> None:
    """New Parameter objects (autograd caches a leaf's shape, so ``.data`` swaps are unsafe);
    callers holding the old ones (optimizers) are updated by :func:`swap_in_optimizer`."""
    branch.resized_from = (branch.A.weight, branch.B.weight)
    for linear, new in ((branch.A, new_a), (branch.B, new_b)):
        linear.weight = nn.Parameter(new.to(linear.weight.device).contiguous(),
                                     requires_grad=linear.weight.requires_grad)
    branch.A.out_features = branch.B.in_features = new_a.shape[0]
    branch.layer.branch_resized(branch.factors, branch.rank)
