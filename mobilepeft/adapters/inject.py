"""Wrap target linears of a model with adapter layers (in place)."""

from __future__ import annotations

from torch import nn

from mobilepeft.adapters.base import AdapterLayer
from mobilepeft.adapters.lora import LoRALinear
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import LLM_ROOT, VISION_ROOT, find_targets, pattern_lookup
from mobilepeft.errors import UserError

#: method name -> layer class; every class takes (base_layer, rank, alpha, dropout, use_rslora).
ADAPTERS: dict[str, type[AdapterLayer]] = {"lora": LoRALinear}


def pattern_path(internal_path: str) -> str:
    """The path rank_pattern/alpha_pattern keys are matched against (PEFT's view for LLM modules)."""
    for root in (LLM_ROOT, VISION_ROOT):
        if internal_path.startswith(root):
            return internal_path[len(root):]
    return internal_path


def inject_adapters(model: nn.Module, spec: AdapterSpec) -> dict[str, AdapterLayer]:
    """Replace every target ``nn.Linear`` with ``spec.method``'s layer; freeze all else is the caller's job."""
    if spec.method not in ADAPTERS:
        raise UserError(f"unknown adapter method {spec.method!r}", field="adapter",
                        hint=f"choose one of: {', '.join(ADAPTERS)}")
    cls = ADAPTERS[spec.method]
    layers: dict[str, AdapterLayer] = {}
    for path, linear in find_targets(model, spec.target_modules).items():
        key = pattern_path(path)
        rank = int(pattern_lookup(spec.rank_pattern, key) or spec.rank)
        alpha = float(pattern_lookup(spec.alpha_pattern, key) or spec.alpha)
        layer = cls(linear, rank=rank, alpha=alpha, dropout=spec.dropout, use_rslora=spec.use_rslora)
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path), child, layer)
        layers[path] = layer
    return layers


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {path: m for path, m in model.named_modules() if isinstance(m, AdapterLayer)}
