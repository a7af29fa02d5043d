"""``mobilepeft adapter info``: what an adapter directory holds and what it costs.

Shapes come from the base model's config alone: the model is built on the ``meta`` device, so
describing an adapter for a 1.7B model reads no weights and allocates nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilepeft.adapters.files import read_adapter_spec, resolve_base_model
from mobilepeft.adapters.inject import adapter_layers, adapter_parameters, inject_adapters
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import LLM_ROOT


@dataclass
class AdapterSummary:
    method: str
    base_model: str
    modules: int
    module_types: dict[str, int]
    #: method-specific rank description -> number of modules with it
    ranks: dict[str, int]
    #: rank of the exact plain-LoRA form -> number of modules
    lowered_ranks: dict[int, int]
    trainable_parameters: int
    lora_parameters_at_nominal_rank: int
    nominal_rank: int
    projector_trained: bool
    groups: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def budget_ratio(self) -> float:
        return self.trainable_parameters / self.lora_parameters_at_nominal_rank

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget_ratio": self.budget_ratio}


def describe_model_adapters(model: torch.nn.Module, spec: AdapterSpec, *, base_model: str = "",
                            projector_trained: bool = False, nominal_rank: int | None = None) -> AdapterSummary:
    layers = adapter_layers(model)
    types: Counter[str] = Counter(path.rpartition(".")[2] if path.startswith(LLM_ROOT) else
                                  "vision:" + path.rpartition(".")[2] for path in layers)
    ranks: Counter[str] = Counter()
    lowered: Counter[int] = Counter()
    groups: dict[str, dict[str, int]] = {}
    for layer in layers.values():
        ranks[layer.describe_rank()] += 1
        shared = layer.shared_group()
        if shared is not None:
            name, sizes = shared
            groups.setdefault(name, {**sizes, "layers": 0})["layers"] += 1
        lowered[layer.rank] += 1
    nominal = nominal_rank or spec.rank
    return AdapterSummary(
        method=spec.method, base_model=base_model, modules=len(layers), module_types=dict(types),
        ranks=dict(sorted(ranks.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        lowered_ranks=dict(sorted(lowered.items())),
        trainable_parameters=sum(p.numel() for p in adapter_parameters(model).values()),
        lora_parameters_at_nominal_rank=nominal * sum(m.in_features + m.out_features for m in layers.values()),
        nominal_rank=nominal, projector_trained=projector_trained, groups=groups,
    )


def summarize_adapter(adapter_dir: str | Path, model_dir: str | Path | None = None) -> AdapterSummary:
    """Summary of an adapter directory; ``model_dir`` defaults to the base model it records."""
    spec, meta = read_adapter_spec(adapter_dir)
    model_dir = resolve_base_model(adapter_dir, meta, model_dir, "needed for the module shapes")
    return summarize_spec(spec, model_dir, projector_trained=bool(meta.get("projector_trained")),
                          nominal_rank=meta.get("nominal_rank"))


def summarize_spec(spec: AdapterSpec, model_dir: str | Path, *, projector_trained: bool = False,
                   nominal_rank: int | None = None) -> AdapterSummary:
    """What ``spec`` would cost on the model at ``model_dir`` (built on ``meta``: nothing is read)."""
    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.mobilevlm import MobileVLMForCausalLM

    with torch.device("meta"):
        model = MobileVLMForCausalLM(MobileVLMConfig.from_dir(model_dir))
        inject_adapters(model, spec)
    return describe_model_adapters(model, spec, base_model=str(model_dir), projector_trained=projector_trained,
                                   nominal_rank=nominal_rank)


def format_summary(s: AdapterSummary, adapter_dir: str | Path) -> str:
    types = ", ".join(f"{name} x{n}" for name, n in s.module_types.items())
    ranks = "; ".join(f"{desc} (x{n})" for desc, n in s.ranks.items())
    lowered = ", ".join(f"r={r} x{n}" for r, n in s.lowered_ranks.items())
    lines = [
        f"adapter        {adapter_dir}",
        f"method         {s.method}",
        f"base model     {s.base_model}",
        f"modules        {s.modules}: {types}",
        f"ranks          {ranks}",
    ]
    for name, g in s.groups.items():
        lines.append(f"  ring group   {name}: {g['layers']} layers share cores, ring rank {g['ring_rank']}, "
                     f"{g['out_features']}x{g['in_features']}")
    lines += [
        f"as plain LoRA  {lowered}  (mobilepeft adapter to-lora)",
        f"trainable      {s.trainable_parameters:,} adapter parameters"
        + ("  (+ the projector)" if s.projector_trained else ""),
        f"vs LoRA r={s.nominal_rank}   {s.lora_parameters_at_nominal_rank:,} on the same modules -> "
        f"{s.budget_ratio:.3f}x the LoRA budget",
    ]
    return "\n".join(lines)
