"""Calling coremltools without its noise.

On import, coremltools logs that its macOS-only runtime cannot load and that torch 2.13 and
scikit-learn 1.9 are newer than it was tested with: all true on Linux and irrelevant to
conversion (docs/deploy-coreml.md lists what was verified). Each conversion then draws a dozen
tqdm bars, one per pass pipeline, and compression warns per weight it leaves alone; the
exporters report their own steps instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """coremltools' log at ERROR and Python-level stderr (its progress bars, root-logger warnings)
    held back for the duration; replayed if the block raises, so a failure keeps its context."""
    logger = logging.getLogger("coremltools")
    level, held = logger.level, io.StringIO()
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        logger.setLevel(level)
