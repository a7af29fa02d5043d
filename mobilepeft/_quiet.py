"""Silence import-time noise of the pinned stack.

transformers imports torchao (pulled in by executorch) on start-up; torchao then logs that its
CUDA-only kernels cannot load and torch logs an Enum-registration deprecation. Neither affects
anything on CPU, and a CLI that opens with four warnings teaches users to ignore warnings.
"""

import logging

for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
