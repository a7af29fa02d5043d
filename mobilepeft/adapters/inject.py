"""Putting adapters into / taking them out of a model (methods come from adapters/registry.py)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mobilepeft.adapters.base import SHARED_ATTR, AdapterLayer
from mobilepeft.adapters.registry import adapter_method
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import find_targets, pattern_lookup, pattern_path


def module_ranks(spec: AdapterSpec, paths: list[str]) -> tuple[dict[str, int], dict[str, float]]:
    """Per-module rank and alpha after ``rank_pattern`` / ``alpha_pattern``."""
    ranks = {p: int(pattern_lookup(spec.rank_pattern, pattern_path(p)) or spec.rank) for p in paths}
    alphas = {p: float(pattern_lookup(spec.alpha_pattern, pattern_path(p)) or spec.alpha) for p in paths}
    return ranks, alphas


def inject_adapters(model: nn.Module, spec: AdapterSpec) -> dict[str, AdapterLayer]:
    """Replace every target ``nn.Linear`` with ``spec.method``'s layer; freezing the rest is the caller's job."""
    layer_cls = adapter_method(spec.method).layer_cls
    targets = find_targets(model, spec.target_modules)
    ranks, alphas = module_ranks(spec, list(targets))
    layers = layer_cls.build(model, targets, spec, ranks, alphas)
    for path, layer in layers.items():
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path), child, layer)
    return layers


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {path: m for path, m in model.named_modules() if isinstance(m, AdapterLayer)}


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter parameter by its name in ``model``: per-layer ones and cross-layer shared ones."""
    params = {f"{path}.{name}": p for path, layer in adapter_layers(model).items()
              for name, p in layer.own_parameters()}
    shared = getattr(model, SHARED_ATTR, None)
    if shared is not None:
        params.update({f"{SHARED_ATTR}.{name}": p for name, p in shared.named_parameters()})
    return params


def lr_multipliers(model: nn.Module) -> dict[str, float]:
    """Adapter parameter name -> LR multiplier, for those not trained at the base learning rate."""
    return {f"{path}.{name}": m for path, layer in adapter_layers(model).items()
            for name, m in layer.lr_multipliers().items()}


def set_progress(layers: Iterable[AdapterLayer], step: int, total_steps: int) -> None:
    """Tell every layer where training is; callers collect ``layers`` once, not every step."""
    for layer in layers:
        layer.set_progress(step, total_steps)


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base linear and put the plain linears back (in place)."""
    for path, layer in adapter_layers(model).items():
        layer.merge()
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path), child, layer.base_layer)
    if hasattr(model, SHARED_ATTR):
        delattr(model, SHARED_ATTR)
    return model
