"""Budget accounting and the hierarchical (coarse → fine) rank allocation of docs/hydra.md.

Every branch m costs c_m = in_m + out_m parameters per rank unit. Fixed-rank LoRA at r0 spends
B = Σ r0_m·c_m (r0_m = r0, or a multihead branch's default share). An allocation keeps
Σ r_m·c_m ≤ B, r_min ≤ r_m ≤ r_max, r_m a multiple of the granule g, and leaves less than one
granule of the most expensive branch unspent.

Coarse: the budget goes to modality groups (vision tower, LLM) and inside them to transformer
blocks in proportion to C·(S/C)^τ, C being the block's fixed-LoRA cost and S its summed
sensitivity. Fine: inside a block, r_m ∝ (S_m/c_m)^τ. Both use sensitivity per parameter, so
τ = 0 gives every branch exactly r0 — fixed LoRA — even where blocks differ in size; the
spec's literal r_m ∝ S_m^τ/c_m would not (docs/hydra.md). The ``rank`` allocation uses
sensitivity per rank unit instead (S/U with U the block's fixed-LoRA rank units; r_m ∝ S_m^τ),
which keeps that τ = 0 property and does not penalise wide modules for their width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BranchInfo:
    cost: int  # in + out
    base_rank: int  # r0 share: what fixed LoRA gives this branch
    max_rank: int  # min(in, out), the rank a branch can hold at all
    group: str
    block: int


@dataclass(frozen=True)
class Bounds:
    r_min: int
    r_max: int
    granule: int

    def clamp(self, info: BranchInfo) -> tuple[int, int]:
        g = self.granule
        hi = min(self.r_max, info.max_rank) // g * g
        return min(self.r_min, hi), hi


def budget_of(infos: Mapping[str, BranchInfo]) -> int:
    return sum(i.base_rank * i.cost for i in infos.values())


def spent(ranks: Mapping[str, int], infos: Mapping[str, BranchInfo]) -> int:
    return sum(ranks[n] * infos[n].cost for n in ranks)


def value_unit(info: BranchInfo, allocation: str) -> int:
    """What a branch's sensitivity or gain is divided by to compare it with other branches: its
    parameters per rank unit (``parameter``), or 1 (``rank``: per rank unit)."""
    return info.cost if allocation == "parameter" else 1


def hierarchical_targets(infos: Mapping[str, BranchInfo], sensitivity: Mapping[str, float],
                         temperature: float, allocation: str = "parameter",
                         block_temperature: float | None = None) -> dict[str, float]:
    """Continuous ranks from the coarse (group → block) and fine (branch) split of the budget.

    ``allocation="rank"`` divides sensitivity by rank units instead of parameters, so a branch
    twice as wide is not halved for it. ``block_temperature`` skews the coarse split on its own
    (default: ``temperature``); 0 keeps every block at its fixed-LoRA budget and lets sensitivity
    move rank only between a block's own modules (docs/hydra.md)."""
    eps = 1e-12

    coarse = temperature if block_temperature is None else block_temperature

    def share(items: dict[str, tuple[float, float, float]]) -> dict[str, float]:
        """key -> (cost, units, sensitivity) to key -> fraction ∝ cost·(sens/units)^τ."""
        w = {k: c * ((s + eps) / u) ** coarse for k, (c, u, s) in items.items()}
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def fixed_cost(names: list[str]) -> float:
        return float(sum(infos[n].base_rank * infos[n].cost for n in names))

    def units(names: list[str]) -> float:
        return float(sum(infos[n].base_rank * value_unit(infos[n], allocation) for n in names))

    def per_unit(n: str) -> float:
        return (sensitivity[n] + eps) / value_unit(infos[n], allocation)

    budget = float(budget_of(infos))
    by_group: dict[str, list[str]] = {}
    for n, i in infos.items():
        by_group.setdefault(i.group, []).append(n)
    group_share = share({g: (fixed_cost(ns), units(ns), sum(sensitivity[n] for n in ns)) for g, ns in by_group.items()})
    targets: dict[str, float] = {}
    for g, names in by_group.items():
        blocks: dict[int, list[str]] = {}
        for n in names:
            blocks.setdefault(infos[n].block, []).append(n)
        block_share = share({b: (fixed_cost(ns), units(ns), sum(sensitivity[n] for n in ns)) for b, ns in blocks.items()})
        for b, members in blocks.items():
            block_budget = budget * group_share[g] * block_share[b]
            # fine: r_m ∝ (S_m/c_m)^τ (or S_m^τ per rank unit), scaled so Σ r_m c_m = block budget;
            # base_rank keeps multihead's parallel/sequential default split as the τ = 0 point
            w = {n: infos[n].base_rank * per_unit(n) ** temperature for n in members}
            norm = sum(w[n] * infos[n].cost for n in members)
            targets.update({n: block_budget * w[n] / norm for n in members})
    return targets


def round_to_budget(targets: Mapping[str, float], infos: Mapping[str, BranchInfo], bounds: Bounds,
                    budget: int | None = None) -> dict[str, int]:
    """Integer ranks: clamp to bounds (redistributing what clamping frees), floor to the granule,
    then hand out granules by largest remainder while the budget allows."""
    budget = budget_of(infos) if budget is None else budget
    g = bounds.granule
    lo_hi = {n: bounds.clamp(infos[n]) for n in targets}
    free = dict(targets)
    fixed: dict[str, float] = {}
    for _ in range(len(free) + 1):  # water-filling: pin out-of-bounds branches, rescale the rest
        remaining = budget - sum(fixed[n] * infos[n].cost for n in fixed)
        total = sum(free[n] * infos[n].cost for n in free)
        scale = remaining / total if total > 0 else 0.0
        out = {n: v * scale for n, v in free.items()}
        pinned = {n: min(max(v, lo_hi[n][0]), lo_hi[n][1]) for n, v in out.items()
                  if not lo_hi[n][0] <= v <= lo_hi[n][1]}
        if not pinned:
            free = out
            break
        fixed.update(pinned)
        free = {n: v for n, v in free.items() if n not in pinned}
    continuous = {**fixed, **free}
    ranks = {n: max(lo_hi[n][0], int(v // g) * g) for n, v in continuous.items()}
    left = budget - spent(ranks, infos)
    for n in sorted(continuous, key=lambda n: ranks[n] - continuous[n]):  # largest remainder first
        if ranks[n] + g <= lo_hi[n][1] and g * infos[n].cost <= left:
            ranks[n] += g
            left -= g * infos[n].cost
    # any budget still unspent goes to whatever can take a granule, most under-served first
    changed = True
    while changed:
        changed = False
        for n in sorted(continuous, key=lambda n: (ranks[n] - continuous[n]) / max(continuous[n], 1e-9)):
            if ranks[n] + g <= lo_hi[n][1] and g * infos[n].cost <= left:
                ranks[n] += g
                left -= g * infos[n].cost
                changed = True
    return {n: ranks[n] for n in targets}


def check_allocation(ranks: Mapping[str, int], infos: Mapping[str, BranchInfo], bounds: Bounds,
                     budget: int | None = None, *, spend_all: bool = True) -> None:
    """The invariants of every allocation; raises AssertionError naming the broken one. ``spend_all``:
    also less than one granule of the widest branch that could grow is left unspent."""
    budget = budget_of(infos) if budget is None else budget
    used = spent(ranks, infos)
    assert used <= budget, f"budget exceeded: {used} > {budget}"
    for n, r in ranks.items():
        lo, hi = bounds.clamp(infos[n])
        assert lo <= r <= hi, f"{n}: rank {r} outside [{lo}, {hi}]"
        assert r % bounds.granule == 0 or r == lo, f"{n}: rank {r} not a multiple of {bounds.granule}"
    can_grow = [infos[n].cost for n, r in ranks.items() if r + bounds.granule <= bounds.clamp(infos[n])[1]]
    if can_grow and spend_all:
        assert budget - used < bounds.granule * max(can_grow), f"{budget - used} parameters left unspent"
