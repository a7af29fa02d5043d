"""The rank schedule's settings (the ``schedule`` section of the training config); torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from mobilepeft.settings import Settings, setting

#: fixed: plain LoRA ranks; hierarchical: one allocation before training; dynamic: reallocations
#: during training; hydra: both (docs/hydra.md)
SCHEDULES = ("fixed", "hierarchical", "dynamic", "hydra")
#: what sensitivity is normalised by when it is compared across modules of different width
ALLOCATIONS = ("parameter", "rank")
#: how a resized branch's new entries get Adam's second moment (branches.swap_in_optimizer)
RESIZE_MOMENTS = ("tensor", "axis")
#: where a dynamic move may take rank from: any module, or only the recipient's own transformer block
MOVE_SCOPES = ("model", "block")
#: the curve the performance model's observation fits to the loss before a move and extrapolates past it
LOSS_TRENDS = ("linear", "log", "quadratic")


@dataclass
class ScheduleSettings(Settings):
    kind: str = setting(
        "fixed", flag="schedule", choices=SCHEDULES,
        help="Rank schedule at the budget of fixed --rank: fixed (plain LoRA; the default: the quality "
             "benchmark's validation prefers hydra on one pretrained base and fixed on another), hierarchical, "
             "dynamic or hydra (both). See docs/hydra.md.")
    rank_min: int | None = setting(None, min=1, help="Schedules: smallest rank of a branch (default: --rank-granule).")
    rank_max: int | None = setting(None, min=1, help="Schedules: largest rank of a branch (default: 4 x --rank).")
    granule: int = setting(2, flag="rank_granule", min=1, help="Schedules: ranks move in multiples of this.")
    temperature: float = setting(0.5, min=0,
                                 help="Schedules: how strongly sensitivity skews the allocation (0 = fixed LoRA).")
    block_temperature: float | None = setting(
        None, min=0,
        help="Schedules: the temperature of the coarse split between transformer blocks alone (default: "
             "--temperature). 0 keeps every block at its fixed-LoRA budget: sensitivity then moves rank only "
             "between a block's own modules. See docs/hydra.md.")
    allocation: str = setting(
        "parameter", choices=ALLOCATIONS,
        help="Schedules: what a module's sensitivity is divided by when ranks are allocated and moved: "
             "parameter (S per parameter: favours the cheap attention projections) or rank (S per rank unit: "
             "does not starve the wide MLP projections). See docs/hydra.md.")
    veto: float = setting(
        0.0, min=0,
        help="Schedules: a dynamic move must be predicted to lower the loss by this many standard errors of the "
             "loss's own noise over the interval after it (0: any predicted gain).")
    move_scope: str = setting(
        "model", choices=MOVE_SCOPES,
        help="Schedules: where a dynamic move may take rank from: model (any module) or block (only the "
             "recipient's own transformer block, so every block keeps the budget the allocation gave it). "
             "See docs/hydra.md.")
    loss_trend: str = setting(
        "log", choices=LOSS_TRENDS,
        help="Schedules: the curve fitted to the loss over the interval before a move and extrapolated past it, "
             "against which the performance model observes what the move did: linear, log (a + b ln step: a "
             "fall that flattens) or quadratic. See docs/hydra.md.")
    resize_moments: str = setting(
        "tensor", choices=RESIZE_MOMENTS,
        help="Schedules: Adam's second moment for a resized branch's entries with no history (all of a shrunk "
             "branch, a grown one's new rank): tensor (the tensor's mean) or axis (the mean over the rank axis "
             "only: one value per input feature of A and per output feature of B). See docs/hydra.md.")
    probe_steps: int = setting(8, min=1, help="Schedules: batches the sensitivity probe looks at before training.")
    realloc_every: int = setting(0, min=0,
                                 help="Schedules: steps between reallocations (0: 5 percent of the run, at least 5).")
    realloc_window: list[float] = setting(
        factory=lambda: [0.1, 0.7], cli="fractions",
        help="Schedules: fractions of the run between which reallocations happen, e.g. 0.1,0.7.")
    #: rank granules moved per reallocation; 0: 1 per 16 branches (at least 1)
    moves: int = 0
    #: weight of the newest measurement in the removal/addition EMAs
    ema: float = 0.5
    #: tokens per watched step the statistics use (a random subset)
    max_tokens: int = 512

    @property
    def hierarchical(self) -> bool:
        return self.kind in ("hierarchical", "hydra")

    @property
    def dynamic(self) -> bool:
        return self.kind in ("dynamic", "hydra")
