"""What the schedule measures on the steps it watches: per-branch gradient statistics.

For a branch reading X (N tokens × in) and receiving the gradient D (N × out) at the layer
output, the loss gradient with respect to its ΔW is G = s·Dᵀ·X. Nothing here forms G for all
steps: a :class:`GradientTap` keeps X and D of the watched steps only, and the statistics use
cheap contractions of them:

- sensitivity ‖G‖_F (the probe), by a Gaussian sketch through D and X;
- removal value of each existing direction σ_i·|u_iᵀ G v_i| (first-order loss change of
  dropping it from ΔW = U Σ Vᵀ), from the projections D·U and X·V;
- addition value: the top singular values of the residual (I − UUᵀ) G (I − VVᵀ), by block power
  iteration with matrix-vector products through D and X; its right singular vectors are where a
  new rank unit should point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import torch

from mobilepeft.distributed import Dist
from mobilepeft.schedule.branches import RankBranch, branch_svd


class GradientTap:
    """Context manager: record each watched branch's input and output gradient for every
    forward/backward inside it (a step with gradient accumulation gives several)."""

    def __init__(self, branches: Iterable[RankBranch]) -> None:
        self.branches = list(branches)
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.grads: dict[str, list[torch.Tensor]] = {}
        # q/k/v (and gate/up) read the same input tensors, multihead's two branches the same
        # gradients: flatten each recorded list once (held alive here, so storage addresses are unique)
        self._flat: dict[tuple, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> GradientTap:
        reads_base = {b.name.split(":")[0] for b in self.branches if b.reads_base_output}
        seen: set[str] = set()
        for b in self.branches:
            name = b.name.split(":")[0]
            if name in seen:
                continue
            seen.add(name)
            self._handles.append(b.layer.register_forward_hook(partial(self._on_layer, name)))
            if name in reads_base:
                self._handles.append(b.layer.base_layer.register_forward_hook(partial(self._on_base, name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_base(self, name: str, module, inputs, output) -> None:
        self.inputs.setdefault(name + ":base_output", []).append(output.detach())

    def _on_layer(self, name: str, layer, inputs, output) -> None:
        self.inputs.setdefault(name, []).append(inputs[0].detach())
        if output.requires_grad:
            output.register_hook(lambda g: self.grads.setdefault(name, []).append(g.detach()))

    def tensors(self, branch: RankBranch) -> tuple[torch.Tensor, torch.Tensor, list[int]] | None:
        """(X, D, rows of each pass) of a branch over all recorded passes, tokens flattened; None
        if nothing was recorded."""
        name = branch.name.split(":")[0]
        key = name + ":base_output" if branch.reads_base_output else name
        xs, ds = self.inputs.get(key), self.grads.get(name)
        if not xs or not ds or len(xs) != len(ds):
            return None
        return self._flatten(xs), self._flatten(ds), [t.numel() // t.shape[-1] for t in xs]

    def _flatten(self, parts: list[torch.Tensor]) -> torch.Tensor:
        key = tuple((t.data_ptr(), t.shape) for t in parts)
        if key not in self._flat:
            self._flat[key] = torch.cat([t.reshape(-1, t.shape[-1]) for t in parts]).float()
        return self._flat[key]


def sampled_tokens(tap: GradientTap, branches: dict[str, RankBranch], limit: int, generator: torch.Generator,
                   dist: Dist) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every branch's (X, D) over the global batch, at most ``limit`` tokens drawn without
    replacement (X rescaled so Dᵀ X keeps its expectation), on CPU; on rank 0 only.

    Exactly what one process running all the micro-batches would see: pass j of rank r is
    micro-batch j·world + r of the step (the sampler's order), each rank's D is rescaled from
    its own ``loss / grad_accum`` to the global ``loss / micro-batches``, and the draw uses rank
    0's generator on every rank. Only the drawn rows travel (``limit`` × width, not the batch).
    """
    local = {n: tap.tensors(b) for n, b in branches.items()}
    shared = dist.all_gather(({n: t[2] for n, t in local.items() if t is not None},
                              generator.get_state() if dist.is_root else None))
    generator.set_state(shared[0][1])
    mine: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    totals: dict[str, tuple[int, int]] = {}
    for n in branches:
        rows = [counts.get(n, []) for counts, _ in shared]
        if not any(rows):
            continue
        # global row offsets of every (rank, pass), in the order one process would have run them
        passes = [(r, j) for j in range(max(map(len, rows))) for r in range(dist.world) if j < len(rows[r])]
        owner = torch.full((sum(map(sum, rows)),), -1, dtype=torch.long)
        start, local_start = 0, [0] * dist.world
        for r, j in passes:
            if r == dist.rank:
                owner[start:start + rows[r][j]] = torch.arange(local_start[r], local_start[r] + rows[r][j])
            local_start[r] += rows[r][j]
            start += rows[r][j]
        total = owner.shape[0]
        idx = torch.randperm(total, generator=generator)[:limit] if total > limit else torch.arange(total)
        totals[n] = (total, idx.shape[0])
        picked = owner[idx]
        keep = (picked >= 0).nonzero().flatten()
        if local[n] is None:
            continue
        x, d, _ = local[n]
        sel = picked[keep].to(x.device)
        mine[n] = (keep, x[sel].cpu(), d[sel].cpu() / dist.world)
    gathered = dist.gather_to_root(mine)
    if gathered is None:
        return {}
    out = {}
    for n, (total, count) in totals.items():
        parts = [g[n] for g in gathered if n in g]
        x = torch.empty(count, parts[0][1].shape[1])
        d = torch.empty(count, parts[0][2].shape[1])
        for keep, xr, dr in parts:
            x[keep], d[keep] = xr, dr
        out[n] = (x * (total / count) if total > count else x, d)
    return out


def gradient_norm(x: torch.Tensor, d: torch.Tensor, generator: torch.Generator | None = None,
                  probes: int = 8) -> float:
    """‖Dᵀ X‖_F by a Gaussian sketch (Hutchinson): E‖Dᵀ X ω‖² = ‖Dᵀ X‖_F² for ω ~ N(0, I).
    Costs N·(in + out)·probes, never N·in·out: fine for a 2048×5632 projection too."""
    omega = torch.randn(x.shape[1], probes, generator=generator)
    return float((d.T @ (x @ omega)).pow(2).sum().div(probes).sqrt())


@dataclass
class BranchStats:
    removal: torch.Tensor  # per existing direction, strongest first (σ order)
    addition: torch.Tensor  # top residual singular values, descending
    directions: torch.Tensor  # their right singular vectors (k × in): where new rank units go


def branch_stats(branch: RankBranch, x: torch.Tensor, d: torch.Tensor, k: int, iters: int = 3,
                 generator: torch.Generator | None = None) -> BranchStats:
    s = branch.scaling
    with torch.no_grad():
        u, sig, v = (t.float().cpu() for t in branch_svd(branch))  # x, d are the sampled rows, on CPU
        # u_iᵀ G v_i = s Σ_t (D u_i)_t (X v_i)_t
        proj = s * ((d @ u) * (x @ v)).sum(0)
        removal = sig * proj.abs()

        def g_res(vec: torch.Tensor) -> torch.Tensor:  # (I-UUᵀ) G (I-VVᵀ) vec, vec: in × k
            vec = vec - v @ (v.T @ vec)
            out = s * (d.T @ (x @ vec))
            return out - u @ (u.T @ out)

        def g_res_t(vec: torch.Tensor) -> torch.Tensor:  # its transpose, vec: out × k
            vec = vec - u @ (u.T @ vec)
            out = s * (x.T @ (d @ vec))
            return out - v @ (v.T @ out)

        q = torch.randn(x.shape[1], k, generator=generator)
        for _ in range(iters):
            q = torch.linalg.qr(g_res_t(g_res(q)))[0]
        top = g_res(q)  # out × k
        small_u, small_s, small_vh = torch.linalg.svd(top, full_matrices=False)
        directions = (q @ small_vh.T).T  # right singular vectors, rows
    return BranchStats(removal=removal, addition=small_s, directions=directions)
