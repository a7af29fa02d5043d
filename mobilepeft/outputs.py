"""Output directories: one rule for every command that writes a directory (docs/safety.md).

- A missing or empty directory is written (atomically, by :func:`mobilepeft.io.atomic_dir`).
- A directory that holds a previous output of the same kind, recognised by the marker file
  ``.mobilepeft-output.json`` that every writer leaves in its output, is replaced only with
  ``--overwrite`` (``train`` may also continue it with ``--resume``).
- Anything else is refused before any work starts: a file, a folder of someone else's files, an
  output of another kind, the command's own input or a folder that contains one.
- Nothing outside the output directory is ever deleted; temporary directories left by a killed
  run are removed when their process is gone (:func:`mobilepeft.io.clean_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from mobilepeft.errors import UserError
from mobilepeft.io import atomic_dir, clean_stale_temporaries, write_json

MARKER = ".mobilepeft-output.json"

#: what each kind of output is, for messages
KINDS = {
    "run": "training run (`mobilepeft train`)",
    "checkpoint": "model checkpoint (`mobilepeft init-model`, `merge`, `train --stage full`)",
    "adapter": "adapter (`mobilepeft train`, `adapter to-lora`, `adapter from-ort`)",
    "dataset": "dataset (`mobilepeft data synth`)",
    "bundle": "bundle (`mobilepeft export ...`)",
    "personalization": "personalization (`mobilepeft personalize`)",
    "demo": "demo directory (`mobilepeft demo`)",
}


def write_marker(directory: Path, kind: str) -> None:
    """Mark ``directory`` as a complete output of ``kind`` (what :func:`output_kind` reads back)."""
    from mobilepeft import __version__

    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    write_json(directory / MARKER, {"kind": kind, "created_by": f"mobilepeft {__version__}"})


@contextlib.contextmanager
def atomic_output(path: str | Path, kind: str) -> Iterator[Path]:
    """A temporary directory that replaces ``path`` as a whole once the block succeeds
    (:func:`mobilepeft.io.atomic_dir`), marked as an output of ``kind`` last, so only a complete
    output carries the marker."""
    with atomic_dir(path, finish=lambda tmp: write_marker(tmp, kind)) as tmp:
        yield tmp


def output_kind(path: Path) -> str | None:
    """The kind recorded by the marker in ``path``, or None (no marker, or not one of ours)."""
    try:
        record = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if kind in KINDS else None


def claim_output_dir(path: str | Path, kind: str, *, overwrite: bool = False, resume: bool = False,
                     inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check that a command producing ``kind`` may write ``path``; return it absolute.

    Called before any work, so a refusal costs nothing and changes nothing. ``resume`` accepts a
    previous output of the same kind to be continued in place (``train --resume``).
    """

    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UserError("is a file, not a directory", path=path, field="--output-dir",
                        hint="pass a new or empty directory")
    target = path.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == target or target in source.parents:
            what = "is" if source == target else "contains"
            raise UserError(f"{what} this command's input {item}: writing it would destroy the input",
                            path=path, field="--output-dir", hint="write the output to a new directory")
    if path.is_dir():
        existing = _listing(path)
        if existing:
            found = output_kind(path)
            if found is None:
                names = ", ".join(existing[:4]) + (" ..." if len(existing) > 4 else "")
                raise UserError(f"is not empty and was not written by mobilepeft ({names}); nothing was deleted",
                                path=path, field="--output-dir",
                                hint="pass a new or empty directory (mobilepeft never replaces folders it did not write)")
            if found != kind:
                raise UserError(f"holds a {KINDS[found]}; this command writes a {KINDS[kind]}", path=path,
                                field="--output-dir", hint="pass a new or empty directory")
            if not (overwrite or resume):
                also = " or --resume to continue it" if kind == "run" else ""
                raise UserError(f"holds a previous {KINDS[kind]}", path=path, field="--output-dir",
                                hint=f"pass --overwrite to replace it{also}, or a new directory")
    parent = _existing_ancestor(path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write here: {parent} is not writable", path=path, field="--output-dir",
                        hint="pass a directory you can write")
    if path.parent.is_dir():
        for note in clean_stale_temporaries(path.parent):
            print(note, file=sys.stderr, flush=True)
    return path


def _listing(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise UserError(f"cannot list the directory ({exc.strerror})", path=path) from exc


def _existing_ancestor(path: Path) -> Path:
    """The nearest directory above (or at) ``path`` that exists; a file in the way is an error."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise UserError(f"cannot create the directory: {candidate} is a file", path=path,
                                hint="pass a path whose parents are directories")
            return candidate
    return Path("/")
