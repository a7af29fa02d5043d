"""The registry of adapter methods: each method registers its layer class and its settings class.

As in PEFT's ``register_peft_method``, a method is one file under ``adapters/methods/`` that
declares its ``AdapterLayer`` subclass and its own ``MethodSettings`` dataclass and registers the
pair; the rest of the package (injection, the CLI flags, the rank schedules, ``adapter info``)
asks the registry and the layer, never tests a class. Every module of ``adapters/methods/`` is
imported on first use, so a new file there is all it takes to add a built-in method.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mobilepeft.errors import UserError

if TYPE_CHECKING:
    from mobilepeft.adapters.base import AdapterLayer
    from mobilepeft.adapters.spec import MethodSettings


@dataclass(frozen=True)
class AdapterMethod:
    name: str
    settings_cls: type[MethodSettings]
    layer_cls: type[AdapterLayer]


_METHODS: dict[str, AdapterMethod] = {}
_loaded = False


def register_adapter_method(name: str, settings_cls: type[MethodSettings], layer_cls: type[AdapterLayer]) -> None:
    """Make ``--adapter NAME`` build ``layer_cls`` configured by ``settings_cls``.

    Setting names become ``mobilepeft train`` flags, so they must not clash with another method's.
    """
    if name in _METHODS and _METHODS[name].layer_cls is not layer_cls:
        raise ValueError(f"adapter method {name!r} is already registered by {_METHODS[name].layer_cls.__name__}")
    from mobilepeft.settings import declared, flag_name

    mine = {flag_name(f) for f, _ in declared(settings_cls)}
    for other in _METHODS.values():
        if other.name != name:
            clash = mine & {flag_name(f) for f, _ in declared(other.settings_cls)}
            if clash:
                raise ValueError(f"{name!r} settings {sorted(clash)} clash with {other.name!r}'s")
    layer_cls.method = name
    _METHODS[name] = AdapterMethod(name, settings_cls, layer_cls)


def adapter_methods() -> dict[str, AdapterMethod]:
    """Every registered method by name (the built-in ones loaded on first call)."""
    global _loaded
    if not _loaded:
        from mobilepeft.adapters import methods

        for info in pkgutil.iter_modules(methods.__path__):
            importlib.import_module(f"{methods.__name__}.{info.name}")
        _loaded = True
    return _METHODS


def adapter_method(name: str) -> AdapterMethod:
    """The method registered as ``name``; an unknown name is the user's error."""
    found = adapter_methods().get(name)
    if found is None:
        raise UserError(f"unknown adapter method {name!r}", field="adapter",
                        hint=f"choose one of: {', '.join(adapter_methods())}")
    return found
