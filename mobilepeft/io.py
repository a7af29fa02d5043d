"""Atomic file and directory writes.

A crash (or Ctrl-C) in the middle of saving must never leave a half-written checkpoint,
adapter or dataset behind: everything is written to a temporary sibling first and moved
into place with ``os.replace``, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mobilepeft.errors import UserError


def _umask() -> int:
    """The process umask (mkstemp/mkdtemp create 0600/0700; final files should honour the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def torch_save(obj: Any, path: str | Path) -> None:
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def load_plain(file: str | Path, *, what: str, refused_hint: str, corrupt_hint: str) -> Any:
    """``torch.load`` of a file that must hold tensors and plain Python values only
    (``weights_only``): the unpickler refuses any other object instead of constructing it, so a
    file handed to us cannot run code. Both refusals name the file; the hints are the caller's."""
    import pickle

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError("holds Python objects other than tensors and plain values (loading them could run code); "
                        "refused without running them", path=file, hint=refused_hint) from exc
    except Exception as exc:
        raise UserError(f"cannot read {what} ({type(exc).__name__}: {exc})", path=file, hint=corrupt_hint) from exc


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_file(path, "wb") as fh:
        fh.write(blob)


def _temp_prefix(path: Path) -> str:
    """Temporaries carry the writer's pid, so a later run can tell a killed writer's leftovers
    from a live one's (:func:`clean_stale_temporaries`)."""
    return f".{path.name}.{os.getpid()}-"


_TEMPORARY = re.compile(r"\..+\.(\d+)-[A-Za-z0-9_]+\.tmp|\..+\.old-(\d+)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(parent: Path) -> list[str]:
    """Remove the temporary files and directories that killed writers left in ``parent``.

    Only names this module creates are touched, and only when the process that created them is
    gone. Returns one line per removal, for the command to report.
    """
    notes = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return notes
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1) or match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        notes.append(f"removed {entry}, left by an interrupted earlier run")
    return notes


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, finish: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole once the block succeeds.

    Readers see either the old directory or the complete new one, never a mix. The temporary
    directory is absolute, so it stays valid for code that changes the working directory.
    ``finish`` runs on the complete temporary directory just before it is published (the output
    marker: :func:`mobilepeft.outputs.atomic_output`). Whether ``path`` may be replaced at all is
    the command's decision (:func:`mobilepeft.outputs.claim_output_dir`), made before it starts.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if finish is not None:
            finish(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
