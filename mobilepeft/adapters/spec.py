"""What adapter to build: the settings every method shares, plus the chosen method's own.

``AdapterSpec`` is the ``adapter`` section of the training config and what an adapter directory
records (``adapter_meta.json``'s ``spec``: the shared fields and the method's fields side by side,
one flat mapping, so files written before methods had their own settings classes still load).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from mobilepeft.adapters.targets import LLM_LINEARS
from mobilepeft.settings import Settings, plain, setting


def _registered() -> list[str]:
    from mobilepeft.adapters.registry import adapter_methods

    return sorted(adapter_methods())


@dataclass
class MethodSettings(Settings):
    """Base of each method's own settings (declared with :func:`mobilepeft.settings.setting`)."""

    #: False for methods without per-module ranks (a rank schedule has nothing to move)
    schedulable: ClassVar[bool] = True
    #: False for methods whose size ``--rank`` does not set
    uses_rank: ClassVar[bool] = True

    def resolve(self, spec: AdapterSpec) -> None:
        """Check these settings against the shared ones (raise ``UserError``); may set ``spec.rank``."""

    def rank_shares(self, rank: int) -> tuple[int, ...]:
        """The ranks a module of total ``rank`` splits into (each must be a multiple of the granule)."""
        return (rank,)


@dataclass
class AdapterSpec(Settings):
    method: str = setting("lora", flag="adapter", choices=lambda: tuple(_registered()),
                          help="Adapter method (docs/methods.md).")
    rank: int = setting(8, min=1, help="LoRA rank r (MobileVLM recipe: 128).")
    alpha: float = setting(16.0, min=0, min_open=True, help="LoRA alpha; scaling = alpha/r (MobileVLM recipe: 256).")
    dropout: float = setting(0.05, flag="lora_dropout", min=0, max=1, max_open=True,
                             help="Dropout on the adapter input.")
    use_rslora: bool = setting(False, cli="switch", help="Scale by alpha/sqrt(r).")
    target_modules: list[str] = setting(
        factory=lambda: list(LLM_LINEARS), cli="list",
        help="Linear layers to adapt, comma separated (default: q,k,v,o,gate,up,down_proj of the LLM; "
             "'vision:q_proj' targets the CLIP tower).")
    #: per-module overrides, PEFT semantics (dotted suffix or full regex, first match wins)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    #: LoRA only (PEFT's lora_bias): lora_B has a bias; set by lowering when a method shifts b0
    lora_bias: bool = False
    #: the method's own settings (its registered class; defaults when not given)
    settings: MethodSettings | None = None

    def __post_init__(self) -> None:
        if self.settings is None:
            from mobilepeft.adapters.registry import adapter_method

            self.settings = adapter_method(self.method).settings_cls()

    def to_dict(self) -> dict[str, Any]:
        shared = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "settings"}
        return {**shared, **self.settings.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        """From a flat mapping (``to_dict``'s); keys of other methods are ignored."""
        from mobilepeft.adapters.registry import adapter_method

        method = data.get("method", "lora")
        settings_cls = adapter_method(method).settings_cls
        own = {f.name for f in fields(settings_cls)}
        shared = {f.name for f in fields(cls)} - {"settings"}
        return cls(**{k: v for k, v in data.items() if k in shared},
                   settings=settings_cls(**{k: v for k, v in data.items() if k in own}))

