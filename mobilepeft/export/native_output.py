"""Capture what native libraries write straight to file descriptors 1/2, past ``sys.stdout``.

ORT's gradient builder logs every graph pass to fd 2 and ExecuTorch's runner prints each token
and its stats to fd 1, whatever Python-side logging says; the CLI's own output must stay readable.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def native_output_captured(fd: int) -> Iterator[IO[bytes]]:
    """Point ``fd`` (1 or 2) at a temporary file for the block and yield that file (to show a tail)."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def tail(captured: IO[bytes], lines: int = 20) -> list[str]:
    captured.seek(0)
    return captured.read().decode(errors="replace").strip().splitlines()[-lines:]
