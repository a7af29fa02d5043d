"""How a setting is declared once: a dataclass field whose metadata carries its help and range.

The training config (``mobilepeft/train/config.py``) and every adapter method's own settings
(``mobilepeft/adapters/methods/``) are dataclasses of such fields. From that one declaration come
the ``mobilepeft train`` flags (name, type, default, ``--help`` text), the YAML keys, the type and
range checks of both, and the saved ``train_config.yaml``. This module imports neither torch nor
typer, so reading a config stays cheap.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from mobilepeft.errors import UserError


def setting(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | None = None,
            flag: str | None = None, min: float | None = None, max: float | None = None,
            min_open: bool = False, max_open: bool = False,
            choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None, cli: str | None = None) -> Any:
    """A dataclass field declared as a setting.

    ``flag``: the command-line/YAML name when it differs from the field's (kept for names users
    already have, e.g. ``--lora-dropout`` for ``dropout``). ``min``/``max`` (open or closed) and
    ``choices`` are checked for flags and YAML alike. ``cli``: how a flag's text becomes the value
    (``"list"``: comma separated, ``"fractions"``: comma separated numbers, ``"key_values"``:
    NAME=INT pairs, ``"switch"``: a --x/--no-x pair). ``choices`` may be a function, for choices
    that are only known at run time (the registered adapter methods): ``--help`` then lists them.
    """
    meta: dict[str, Any] = {"help": help}
    for key, value in (("flag", flag), ("min", min), ("max", max), ("choices", choices), ("cli", cli)):
        if value is not None:
            meta[key] = value
    if min_open:
        meta["min_open"] = True
    if max_open:
        meta["max_open"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(f: Field) -> str:
    """The name users write (``lora_dropout``); ``--lora-dropout`` on the command line."""
    return f.metadata.get("flag", f.name)


def choices_of(f: Field) -> tuple[str, ...] | None:
    """The values field ``f`` accepts, if it declares them."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """The accepted range of a numeric field, as in an error message or ``--help``."""
    parts = []
    if "min" in meta:
        parts.append(f"{'>' if meta.get('min_open') else '>='} {meta['min']:g}")
    if "max" in meta:
        parts.append(f"{'<' if meta.get('max_open') else '<='} {meta['max']:g}")
    return " and ".join(parts)


def _check_range(name: str, value: float, meta: typing.Mapping[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"must be a finite number (got {value})", field=name)
    low, high = meta.get("min"), meta.get("max")
    too_low = low is not None and (value <= low if meta.get("min_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("max_open") else value > high)
    if too_low or too_high:
        raise UserError(f"must be {describe_range(meta)} (got {value:g})", field=name)


def checked(f: Field, value: Any, hint: Any) -> Any:
    """``value`` of field ``f`` with its declared type, within its declared range and choices."""
    name = flag_name(f)
    value = _typed(name, value, hint)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_range(name, value, f.metadata)
    choices = choices_of(f)
    if choices and value is not None and value not in choices:
        raise UserError(f"must be one of {', '.join(choices)} (got {value!r})", field=name)
    return value


def check_fields(obj: Any) -> None:
    """Every field of the dataclass instance ``obj`` checked (and ints widened to floats) in place."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if f.metadata.get("help") is not None:
            setattr(obj, f.name, checked(f, getattr(obj, f.name), hints[f.name]))


def declared(cls: type) -> list[tuple[Field, Any]]:
    """The settings of dataclass ``cls`` (fields declared with :func:`setting`) and their types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if f.metadata.get("help") is not None]


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (YAML and Python callers bypass typer)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(name, value, inner)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"expected a list, got {value!r}", field=name)
        return [_typed(name, v, args[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected a mapping NAME: VALUE, got {value!r}", field=name)
        return {_typed(name, k, args[0]): _typed(name, v, args[1]) for k, v in value.items()}
    ok = isinstance(value, hint) and not (hint in (int, float) and isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise UserError(f"expected {_TYPE_NAMES.get(hint, hint.__name__)}, got {value!r}", field=name)
    return value


@dataclass
class Settings:
    """Base of a group of settings (a config section, an adapter method's own settings)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


def plain(value: Any) -> Any:
    """``value`` as YAML/JSON-ready data (settings groups as mappings)."""
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
