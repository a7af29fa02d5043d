"""HyDRA: hierarchical + dynamic rank allocation at a fixed parameter budget (docs/hydra.md).

The trainer drives a :class:`RankScheduler` with three calls per optimizer step: ``tap(step)``
(a context that records per-branch activations and gradients on the steps the schedule
watches), ``after_backward`` (turns them into statistics) and ``after_step`` (reallocates when
due). The first ``probe_steps`` steps are the probe; right after them the hierarchical
allocation resizes every branch (function-preserving, so training just continues); later,
every ``realloc_every`` steps inside the window, the dynamic phase moves rank granules.
``state_dict``/``load_state_dict`` make ``--resume`` exact.

Under torchrun the statistics are those of the global batch: every rank contributes its share
of the sampled tokens, rank 0 computes and decides, and every rank applies rank 0's decision
(ranks, growth directions, RNG state), so all ranks hold identical adapters.

Schedules: ``fixed`` (plain LoRA, no scheduler at all), ``hierarchical`` (probe + allocation
once), ``dynamic`` (start from fixed ranks, reallocate during training), ``hydra`` (both).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import pattern_path
from mobilepeft.distributed import Dist
from mobilepeft.io import write_json
from mobilepeft.schedule.branches import (
    RankBranch,
    collect_branches,
    reinit_branch,
    resize_branch,
    swap_in_optimizer,
)
from mobilepeft.schedule.budget import (
    Bounds,
    BranchInfo,
    budget_of,
    check_allocation,
    hierarchical_targets,
    round_to_budget,
    spent,
    value_unit,
)
from mobilepeft.schedule.measure import GradientTap, branch_stats, gradient_norm, sampled_tokens
from mobilepeft.schedule.settings import LOSS_TRENDS, ScheduleSettings


@dataclass
class _Event:
    step: int
    kind: str
    ranks: dict[str, int]
    moves: list[dict[str, Any]] = field(default_factory=list)
    predicted_loss_change: float | None = None
    observed_loss_change: float | None = None
    budget_used: int = 0


def _basis(steps: torch.Tensor, trend: str) -> torch.Tensor:
    """The columns a loss trend is a least-squares combination of, at 0-based ``steps``."""
    ones = torch.ones_like(steps)
    if trend == "linear":
        return torch.stack([ones, steps], dim=1)
    if trend == "log":  # a + b ln(1 + step): a fall that flattens as the run goes on
        return torch.stack([ones, torch.log1p(steps)], dim=1)
    if trend == "quadratic":
        return torch.stack([ones, steps, steps**2], dim=1)
    raise ValueError(f"unknown loss trend {trend!r}; choose from {', '.join(LOSS_TRENDS)}")


def _fit(points: list[tuple[int, float]], trend: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Least-squares coefficients of ``trend`` through (0-based step, loss) pairs and their residuals;
    None when there are fewer pairs than coefficients."""
    xs = torch.tensor([float(s) for s, _ in points], dtype=torch.float64)
    ys = torch.tensor([v for _, v in points], dtype=torch.float64)
    design = _basis(xs, trend)
    if len(points) < design.shape[1]:
        return None
    coef = torch.linalg.lstsq(design, ys.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return coef, ys - design @ coef


def interval(settings: ScheduleSettings, total_steps: int) -> int:
    """Steps between dynamic reallocations."""
    return settings.realloc_every or max(5, total_steps // 20)


def reallocation_steps(settings: ScheduleSettings, total_steps: int, probe_steps: int) -> set[int]:
    """Step indices (0-based) after which a dynamic reallocation happens."""
    if not settings.dynamic:
        return set()
    every, (lo, hi) = interval(settings, total_steps), settings.realloc_window
    return {s - 1 for s in range(every, total_steps, every) if lo * total_steps <= s <= hi * total_steps and s > probe_steps}


def _observed_span(every: int) -> int:
    return max(2, every // 2)


def _windows(losses: list[tuple[int, float]], event_step: int,
             every: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The (0-based step, loss) pairs of the interval before an event after step ``event_step`` (1-based)
    and of the half interval after it."""
    half = _observed_span(every)
    return ([(s, v) for s, v in losses if event_step - every <= s + 1 <= event_step],
            [(s, v) for s, v in losses if event_step < s + 1 <= event_step + half])


def loss_slope_before(losses: list[tuple[int, float]], event_step: int, every: int) -> float:
    """The loss's linear trend per step over the interval before an event."""
    fitted = _fit(_windows(losses, event_step, every)[0], "linear")
    return float(fitted[0][1]) if fitted is not None else 0.0


def observed_loss_change(losses: list[tuple[int, float]], event_step: int, every: int,
                         trend: str) -> float | None:
    """The loss change attributed to an event after step ``event_step`` (1-based): the mean loss over the
    half interval after it minus ``trend`` fitted to the interval before and extrapolated over the same
    steps; ``losses`` holds (0-based step, loss) pairs. None when either side has too few steps."""
    before, after = _windows(losses, event_step, every)
    fitted = _fit(before, trend)
    if fitted is None or not after:
        return None
    steps = torch.tensor([float(s) for s, _ in after], dtype=torch.float64)
    expected = float((_basis(steps, trend) @ fitted[0]).mean())
    return sum(v for _, v in after) / len(after) - expected


class RankScheduler:
    def __init__(self, model: torch.nn.Module, settings: ScheduleSettings, total_steps: int,
                 dist: Dist | None = None, *, seed: int = 0) -> None:
        self.settings = settings
        self.dist = dist or Dist()
        self.branches: dict[str, RankBranch] = collect_branches(model)
        self.infos = {n: BranchInfo(cost=b.cost, base_rank=b.rank, max_rank=b.max_rank, group=b.group, block=b.block)
                      for n, b in self.branches.items()}
        self.bounds = Bounds(settings.rank_min, settings.rank_max, settings.granule)
        self.budget = budget_of(self.infos)
        self.generator = torch.Generator().manual_seed(seed + 104_729)
        self.probe_steps = min(settings.probe_steps, total_steps - 1) if settings.hierarchical else 0
        self.realloc_steps = reallocation_steps(settings, total_steps, self.probe_steps)
        self.every = interval(settings, total_steps)
        self._sens_sum: dict[str, float] = {}
        #: wall seconds the schedule itself spent (statistics, reallocation), for overhead reports
        self.seconds = {"statistics": 0.0, "reallocation": 0.0}
        self.moves_per_event = settings.moves or max(1, len(self.branches) // 16)
        self.sensitivity: dict[str, float] = {}
        self.removal: dict[str, torch.Tensor] = {}
        self.addition: dict[str, torch.Tensor] = {}
        self.directions: dict[str, torch.Tensor] = {}
        self.calibration = {"removal": 1.0, "addition": 1.0}
        self.observations: list[tuple[float, float, float]] = []  # (raw removal, raw addition, observed)
        self.losses: list[tuple[int, float]] = []
        self.history: list[_Event] = [_Event(0, "initial", self.ranks(), budget_used=spent(self.ranks(), self.infos))]
        self._pending: tuple[_Event, tuple[float, float]] | None = None

    # --- shared --------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        return {n: b.rank for n, b in self.branches.items()}

    def _check(self) -> None:
        """The budget invariants after a resize; with ``--move-scope block`` also no block above its budget
        (a block may hold back part of a donor's granule until a later move there spends it)."""
        ranks = self.ranks()
        in_scopes = self.settings.move_scope == "block" and self.history[-1].kind == "dynamic"
        check_allocation(ranks, self.infos, self.bounds, self.budget, spend_all=not in_scopes)
        if in_scopes:
            for key, left in self._scope_left(ranks).items():
                assert left >= 0, f"block {key} above its budget by {-left}"

    # --- watching -----------------------------------------------------------------------
    def _watched(self, step: int) -> bool:
        return step < self.probe_steps or step in self.realloc_steps

    def tap(self, step: int) -> contextlib.AbstractContextManager:
        """Wrap a step's forward/backward: records activations and gradients on watched steps."""
        return GradientTap(self.branches.values()) if self._watched(step) else contextlib.nullcontext()

    def after_backward(self, step: int, tap: Any) -> None:
        if not isinstance(tap, GradientTap):
            return
        t0 = time.perf_counter()
        self._measure(step, sampled_tokens(tap, self.branches, self.settings.max_tokens, self.generator, self.dist))
        self.seconds["statistics"] += time.perf_counter() - t0

    def _measure(self, step: int, sampled: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        need_values = step in self.realloc_steps or step == self.probe_steps - 1
        k, w = 2 * self.settings.granule, self.settings.ema
        for n, (x, d) in sampled.items():
            b = self.branches[n]
            if step < self.probe_steps:
                self._sens_sum[n] = self._sens_sum.get(n, 0.0) + gradient_norm(x, d, self.generator) * abs(b.scaling)
            if not need_values:
                continue
            room = min(b.in_features, b.out_features) - b.rank
            st = branch_stats(b, x, d, k=max(1, min(k, room)), generator=self.generator)
            for store, value in ((self.removal, st.removal), (self.addition, st.addition)):
                old = store.get(n)
                store[n] = value if old is None or old.shape != value.shape else w * value + (1 - w) * old
            self.directions[n] = st.directions

    # --- hierarchical: coarse -> fine, once the probe has seen its steps -------------------
    def _allocate_hierarchically(self, step: int) -> _Event:
        self.sensitivity = {n: self._sens_sum.get(n, 0.0) / self.probe_steps for n in self.branches}
        targets = hierarchical_targets(self.infos, self.sensitivity, self.settings.temperature, self.settings.allocation,
                                       self.settings.block_temperature)
        ranks = round_to_budget(targets, self.infos, self.bounds, self.budget)
        return _Event(step + 1, "hierarchical", ranks, budget_used=spent(ranks, self.infos))

    def _apply(self, ranks: dict[str, int], optimizer: torch.optim.Optimizer) -> None:
        """Function-preserving resizes to ``ranks``; the optimizer follows."""
        for n, b in self.branches.items():
            if ranks[n] != b.rank:
                old = b.rank
                kind = resize_branch(b, ranks[n], self.directions.get(n), self.generator)
                swap_in_optimizer(optimizer, b, kind, old, self.settings.resize_moments)
                for store in (self.removal, self.addition, self.directions):
                    store.pop(n, None)

    def after_step(self, step: int, loss: float, optimizer: torch.optim.Optimizer, lr: float) -> _Event | None:
        self.losses.append((step, loss))
        self.losses = self.losses[-4 * self.every:]
        self._observe(step)
        if step != self.probe_steps - 1 and step not in self.realloc_steps:
            return None
        t0 = time.perf_counter()
        event = None
        if self.dist.is_root:
            event = self._allocate_hierarchically(step) if step == self.probe_steps - 1 else self._reallocate(step, lr)
        grown = {n for n, r in (event.ranks if event else {}).items() if r > self.branches[n].rank}
        event, directions, rng = self.dist.broadcast(
            (event, {n: self.directions[n] for n in grown if n in self.directions}, self.generator.get_state()))
        self.directions.update(directions)
        self.generator.set_state(rng)
        self._apply(event.ranks, optimizer)
        self.history.append(event)
        self._check()
        self.seconds["reallocation"] += time.perf_counter() - t0
        return event

    def _unit_values(self, lr: float) -> tuple[dict[str, float], dict[str, float]]:
        """Uncalibrated predicted loss change of one granule: lost by removing a branch's weakest
        directions, gained by adding its best new ones (σ of the residual gradient × the weight
        change a new unit makes over one interval)."""
        g = self.settings.granule
        remove, add = {}, {}
        for n, b in self.branches.items():
            if n in self.removal:
                remove[n] = float(self.removal[n].sort().values[:g].sum())
            if n in self.addition:
                step_size = lr * abs(b.scaling) * self.every * float(b.A.weight.detach().norm(dim=1).median())
                add[n] = float(self.addition[n][:g].sum()) * step_size
        return remove, add

    def _reallocate(self, step: int, lr: float) -> _Event:
        g = self.settings.granule
        raw_remove, raw_add = self._unit_values(lr)
        remove = {n: v * self.calibration["removal"] for n, v in raw_remove.items()}
        add = {n: v * self.calibration["addition"] for n, v in raw_add.items()}
        ranks = self.ranks()
        lo_hi = {n: self.bounds.clamp(self.infos[n]) for n in ranks}
        cost = {n: g * self.infos[n].cost for n in ranks}
        per = {n: g * value_unit(self.infos[n], self.settings.allocation) for n in ranks}
        donors = sorted((n for n in remove if ranks[n] - g >= lo_hi[n][0]), key=lambda n: remove[n] / per[n])
        recipients = sorted((n for n in add if ranks[n] + g <= lo_hi[n][1]), key=lambda n: -add[n] / per[n])
        margin = self.settings.veto * self._loss_noise()
        scope = self._move_scope()
        left = self._scope_left(ranks)  # what a recipient may take without a donor, per scope
        moves: list[dict[str, Any]] = []
        raw_r = raw_a = 0.0
        used: set[str] = set()
        for r in recipients:
            if len(moves) >= self.moves_per_event:
                break
            if r in used:
                continue
            taken, freed = [], left[scope(r)]
            for d in donors:
                if freed >= cost[r]:
                    break
                if d not in used and d != r and scope(d) == scope(r):
                    taken.append(d)
                    freed += cost[d]
            loss_up = sum(remove[d] for d in taken)
            if freed < cost[r] or add[r] - loss_up <= margin:
                continue  # not affordable, or not predicted to help by more than the loss's noise
            for d in taken:
                ranks[d] -= g
                used.add(d)
            ranks[r] += g
            used.add(r)
            left[scope(r)] = freed - cost[r]
            raw_r += sum(raw_remove[d] for d in taken)
            raw_a += raw_add[r]
            moves.append({"to": r, "from": taken, "predicted_gain": add[r], "predicted_loss": loss_up})
        for r in recipients:  # spend what is left (keeps the budget within one granule)
            if r not in used and cost[r] <= left[scope(r)] and ranks[r] + g <= lo_hi[r][1] and add[r] >= margin:
                ranks[r] += g
                left[scope(r)] -= cost[r]
                used.add(r)
                raw_a += raw_add[r]
                moves.append({"to": r, "from": [], "predicted_gain": add[r], "predicted_loss": 0.0})
        predicted = (self.calibration["removal"] * raw_r - self.calibration["addition"] * raw_a) if moves else 0.0
        event = _Event(step + 1, "dynamic", ranks, moves, predicted, budget_used=spent(ranks, self.infos))
        self._pending = (event, (raw_r, raw_a)) if moves else None
        return event

    def _move_scope(self) -> Callable[[str], Any]:
        """The key a donor must share with its recipient: one key for the whole model, or the branch's
        (group, block) with ``--move-scope block``."""
        if self.settings.move_scope == "block":
            return lambda n: (self.infos[n].group, self.infos[n].block)
        return lambda n: None

    def _scope_budgets(self) -> dict[Any, int]:
        """The budget of each move scope: the whole budget, or each block's spend as the last allocation
        (hierarchical, else the initial ranks) left it, which no dynamic move may exceed."""
        if self.settings.move_scope != "block":
            return {None: self.budget}
        scope, budgets = self._move_scope(), collections.defaultdict(int)
        allocated = next(e for e in reversed(self.history) if e.kind != "dynamic").ranks
        for n, r in allocated.items():
            budgets[scope(n)] += r * self.infos[n].cost
        return budgets

    def _scope_left(self, ranks: dict[str, int]) -> dict[Any, int]:
        """Each move scope's budget minus what ``ranks`` spend in it."""
        scope, left = self._move_scope(), self._scope_budgets()
        for n, r in ranks.items():
            left[scope(n)] -= r * self.infos[n].cost
        return left

    def _loss_noise(self) -> float:
        """Standard error of a mean of the loss over half an interval, from the scatter of the last
        interval's losses around their ``--loss-trend``: the smallest loss change the observation of
        :meth:`_observe` can tell from noise."""
        fitted = _fit(self.losses[-self.every:], self.settings.loss_trend)
        if fitted is None or len(fitted[1]) < 3:
            return 0.0
        return float(fitted[1].std() / _observed_span(self.every) ** 0.5)

    def _observe(self, step: int) -> None:
        """Loss change attributable to the last reallocation: mean loss over the half interval
        after it, minus the ``--loss-trend`` of the interval before, extrapolated."""
        if self._pending is None:
            return
        event, (raw_r, raw_a) = self._pending
        if step + 1 < event.step + _observed_span(self.every):
            return
        self._pending = None
        observed = observed_loss_change(self.losses, event.step, self.every, self.settings.loss_trend)
        if observed is None:
            return
        event.observed_loss_change = observed
        self.observations.append((raw_r, raw_a, observed))
        self._calibrate()

    def _calibrate(self) -> None:
        """Ridge least squares of observed ≈ a_r·removal − a_a·addition, pulled towards (1, 1)."""
        rows = torch.tensor([[r, -a] for r, a, _ in self.observations], dtype=torch.float64)
        obs = torch.tensor([o for _, _, o in self.observations], dtype=torch.float64)
        scale = float((rows ** 2).sum() / max(len(rows), 1)) + 1e-12
        lam = scale  # one observation's worth of prior
        prior = torch.tensor([self.calibration["removal"], self.calibration["addition"]], dtype=torch.float64)
        lhs = rows.T @ rows + lam * torch.eye(2, dtype=torch.float64)
        sol = torch.linalg.solve(lhs, rows.T @ obs + lam * prior)
        self.calibration = {"removal": float(sol[0].clamp(0.1, 10.0)), "addition": float(sol[1].clamp(0.1, 10.0))}

    # --- outputs and resume --------------------------------------------------------------
    def final_spec(self, spec: AdapterSpec) -> AdapterSpec:
        """``spec`` with the scheduled ranks as per-module patterns (so the adapter reloads)."""
        out = AdapterSpec.from_dict(spec.to_dict())
        layers = {b.name.split(":")[0]: b.layer for b in self.branches.values()}
        for path, layer in layers.items():
            key = pattern_path(path)
            total = layer.rank
            if total != spec.rank or layer.alpha != spec.alpha:
                out.rank_pattern[key] = total
                out.alpha_pattern[key] = layer.alpha
            for name, value in layer.scheduled_patterns(spec).items():
                getattr(out.settings, name)[key] = value
        return out

    def write_history(self, path: Path) -> None:
        write_json(path, {
            "schedule": asdict(self.settings),
            "budget": self.budget,
            "bounds": asdict(self.bounds),
            "probe_steps": self.probe_steps,
            "realloc_steps": sorted(s + 1 for s in self.realloc_steps),
            "branches": {n: {"cost": i.cost, "base_rank": i.base_rank, "group": i.group, "block": i.block,
                             "module_type": self.branches[n].module_type, "kind": self.branches[n].kind}
                         for n, i in self.infos.items()},
            "sensitivity": self.sensitivity,
            "calibration": self.calibration,
            "seconds": self.seconds,
            "events": [asdict(e) for e in self.history],
        })

    def state_dict(self) -> dict[str, Any]:
        pending = self._pending
        return {
            "ranks": self.ranks(), "sensitivity": self.sensitivity, "sens_sum": self._sens_sum, "removal": self.removal,
            "addition": self.addition, "directions": self.directions, "calibration": self.calibration,
            "observations": self.observations, "losses": self.losses, "generator": self.generator.get_state(),
            "seconds": self.seconds,
            "history": [asdict(e) for e in self.history],
            "pending": None if pending is None else pending[1],  # its event is always the newest
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give every branch its checkpointed rank (shapes only: the trainer then loads values)."""
        for n, r in state["ranks"].items():
            if self.branches[n].rank != r:
                reinit_branch(self.branches[n], r)
        self.sensitivity, self.removal, self.addition = state["sensitivity"], state["removal"], state["addition"]
        self._sens_sum = state["sens_sum"]
        self.directions, self.calibration = state["directions"], state["calibration"]
        self.observations, self.losses = list(state["observations"]), list(state["losses"])
        self.generator.set_state(state["generator"])
        self.seconds = dict(state["seconds"])
        self.history = [_Event(**e) for e in state["history"]]
        self._pending = None if state["pending"] is None else (self.history[-1], tuple(state["pending"]))
