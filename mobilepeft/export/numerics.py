"""How two runtimes' numbers are compared: one definition for every self-test and parity check."""

from __future__ import annotations

import numpy as np


def relative_error(value: np.ndarray | float, reference: np.ndarray | float) -> float:
    """max |value - reference| / max(|reference|, tiny) — one number for scalars and arrays."""
    value, reference = np.asarray(value, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(value - reference)) / max(float(np.max(np.abs(reference))), 1e-12))
