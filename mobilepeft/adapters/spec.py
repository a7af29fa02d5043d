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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdapterSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
