"""mobilepeft: on-device fine-tuning and deployment toolkit for small vision-language models."""

from typing import Any

from mobilepeft import _quiet  # noqa: F401  (must run before transformers is imported)
from mobilepeft.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "load_vlm", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: importing transformers costs seconds; `mobilepeft --help` and the data tools should not pay it.
    if name == "load_vlm":
        from mobilepeft.loading import load_vlm

        return load_vlm
    raise AttributeError(f"module 'mobilepeft' has no attribute {name!r}")
