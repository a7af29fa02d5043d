"""mobilepeft: on-device fine-tuning and deployment toolkit for small vision-language models."""

from mobilepeft import _quiet  # noqa: F401  (must run before transformers is imported)
from mobilepeft.errors import UserError
from mobilepeft.loading import load_vlm

__version__ = "0.1.0"
__all__ = ["UserError", "load_vlm", "__version__"]
