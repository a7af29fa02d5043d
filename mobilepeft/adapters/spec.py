"""What adapter to build: method, ranks, scaling, targets (mirrors the CLI flags)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mobilepeft.adapters.targets import LLM_LINEARS


@dataclass
class AdapterSpec:
    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLM_LINEARS))
    use_rslora: bool = False
    #: per-module overrides, PEFT semantics (dotted suffix or full regex, first match wins)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    #: LoRA only (PEFT's lora_bias): lora_B has a bias; set by lowering when a method shifts b0
    lora_bias: bool = False
    # multihead (Hydra): branch ranks; None splits each module's rank, parallel getting the odd unit
    rank_parallel: int | None = None
    rank_sequential: int | None = None
    #: multihead, per module: sequential-branch rank (parallel = that module's rank minus it); set by rank schedules
    sequential_rank_pattern: dict[str, int] = field(default_factory=dict)
    # dmlora: number of branches, final branch-drop probability, LR multiplier of the learning scalar
    branches: int = 4
    branch_drop_max: float = 0.5
    scalar_lr_ratio: float = 0.1
    # adaring: ring rank r1=r2=r3 per group, overridable per module type (e.g. {"down_proj": 6})
    ring_rank: int = 4
    ring_rank_pattern: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdapterSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def branch_ranks(self, rank: int) -> tuple[int, int]:
        """Multihead (parallel, sequential) ranks of a module whose total rank is ``rank``."""
        if self.rank_parallel is not None and self.rank_sequential is not None and rank == self.rank:
            return self.rank_parallel, self.rank_sequential
        if self.rank_parallel is not None and self.rank_sequential is not None:
            par = round(rank * self.rank_parallel / (self.rank_parallel + self.rank_sequential))
        else:
            par = (rank + 1) // 2
        par = min(max(par, 1 if rank > 1 else rank), rank)
        return par, rank - par
