"""The bundle: one directory per exported model, described by ``manifest.json`` (docs/mobile.md).

The manifest is validated against ``bundle.schema.json`` when written and when read, and
records every file's size and SHA-256, so a missing, truncated, corrupted or tampered file is
refused by name before a runtime runs it (docs/mobile.md, "Verifying a bundle before it runs").

Hashing a 1 GB program costs about a second, so a full verification leaves a stamp outside the
bundle (:func:`stamp_file`) with each file's identity (size, mtime, ctime, inode, device); a file
whose identity is unchanged is not hashed again. Any write to a file changes its mtime and ctime,
and ctime cannot be set back, so a modified file is always hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from mobilepeft.errors import UserError
from mobilepeft.io import write_json

MANIFEST = "manifest.json"
#: a file changed this recently is hashed but not stamped: a second write within the same
#: timestamp tick (2 s on FAT) would leave its identity unchanged
STAMP_SETTLE_NS = 2_000_000_000
#: full: hash every file; cached: hash the files changed since the last full hash (the default);
#: size: sizes only (for code that has just written or verified the bundle itself)
Verify = Literal["full", "cached", "size"]
MANIFEST_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("bundle.schema.json")


@cache
def manifest_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def validate_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Raise a :class:`UserError` naming the manifest file and the offending field."""
    import jsonschema

    version = manifest.get("manifest_version") if isinstance(manifest, dict) else None
    if version != MANIFEST_VERSION:
        raise UserError(
            f"manifest_version is {version!r}; this mobilepeft reads version {MANIFEST_VERSION}",
            path=where, field="manifest_version",
            hint="re-export the bundle with this mobilepeft version",
        )
    validator = jsonschema.Draft202012Validator(manifest_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is not None:
        field = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise UserError(f"manifest does not match the bundle schema: {error.message}", path=where, field=field,
                        hint="re-export the bundle; manifests are written by mobilepeft, not by hand")


def file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_manifest(bundle_dir: Path, manifest: dict[str, Any], *, replaceable: tuple[str, ...] = ()) -> dict[str, Any]:
    """Record every file under ``bundle_dir`` in ``manifest["files"]``, validate, write ``manifest.json``.

    ``replaceable`` files (an adapter kept as data) are left out: an app rewrites them, and they
    are checked against their own section's layout instead of a hash.
    """
    files = sorted(p for p in bundle_dir.rglob("*")
                   if p.is_file() and p.name != MANIFEST and p.relative_to(bundle_dir).as_posix() not in replaceable)
    manifest = dict(manifest, files={p.relative_to(bundle_dir).as_posix(): file_record(p) for p in files})
    validate_manifest(manifest, bundle_dir / MANIFEST)
    write_json(bundle_dir / MANIFEST, manifest)
    return manifest


def base_manifest(model, model_dir: Path, max_seq_len: int) -> dict[str, Any]:
    """The sections every bundle shares: model dims, tokenizer, prompt template, image preprocessing."""
    from mobilepeft import __version__

    cfg, tok = model.config, model.tokenizer
    llama = cfg.llama_config()
    return {
        "format": "mobilepeft-bundle",
        "manifest_version": MANIFEST_VERSION,
        "created_by": f"mobilepeft {__version__}",
        "model": {
            "family": "mobilevlm",
            "projector_type": cfg.projector_type,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": llama.num_hidden_layers,
            "vocab_size": llama.vocab_size,
            "num_image_tokens": cfg.num_image_tokens,
            "mm_hidden_size": cfg.mm_hidden_size,
            "base_model": str(model_dir),
        },
        "tokenizer": {"file": tok.file.name, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id},
        "prompt": prompt_section(),
        "image_preprocessing": image_preprocessing_section(cfg.image_size),
        "max_seq_len": max_seq_len,
    }


def prompt_section() -> dict[str, Any]:
    """The v1 conversation template as the apps apply it (mobilepeft.data.template)."""
    from mobilepeft.data.template import IMAGE_PLACEHOLDER, SYSTEM_PROMPT
    from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX

    return {
        "template": "v1",
        "system": SYSTEM_PROMPT,
        "first_turn": "{system} USER: {question} ASSISTANT:",
        "next_turn": "USER: {question} ASSISTANT:",
        "stop": "</s>",
        "image_placeholder": IMAGE_PLACEHOLDER,
        "image_token_id": IMAGE_TOKEN_INDEX,
    }


def image_preprocessing_section(size: int) -> dict[str, Any]:
    """MobileVLM's "pad" preprocessing (mobilepeft.models.image_processing) at ``size`` pixels."""
    from mobilepeft.models.image_processing import CLIP_MEAN, CLIP_STD, PAD_COLOR

    return {
        "size": size,
        "aspect": "pad",
        "pad_color": list(PAD_COLOR),
        "resize": "shortest_side_bicubic",
        "crop": "center",
        "rescale": 1 / 255,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "layout": "NCHW",
    }


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    def file(self, relative: str) -> Path:
        return self.path / relative

    def section(self, name: str) -> dict[str, Any]:
        if name not in self.manifest:
            present = [k for k in ("onnx_training", "executorch", "coreml") if k in self.manifest]
            raise UserError(f"the bundle has no {name!r} section (it has: {', '.join(present) or 'none'})",
                            path=self.path / MANIFEST, field=name,
                            hint=f"export one with `mobilepeft export {name.replace('_', '-')}`")
        return self.manifest[name]


def read_bundle(path: str | Path, *, verify: Verify = "cached") -> Bundle:
    """Open a bundle directory: manifest parsed and validated, every recorded file present and intact."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not path.is_dir():
        raise UserError("bundle directory not found", path=path, hint="pass the --output-dir of an export command")
    if not manifest_file.is_file():
        raise UserError("not a bundle: manifest.json is missing", path=manifest_file,
                        hint="re-export the bundle; an interrupted export never leaves a partial directory")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"manifest is not valid JSON ({exc})", path=manifest_file) from exc
    validate_manifest(manifest, manifest_file)
    stamp = _read_stamp(path) if verify == "cached" else {}
    verified = {}
    for relative, record in manifest["files"].items():
        file = path / relative
        if not file.is_file():
            raise UserError("file listed in the manifest is missing", path=file,
                            hint="copy the whole bundle directory, or re-export it")
        identity = dict(_identity(file), sha256=record["sha256"])
        size = identity["bytes"]
        if size != record["bytes"]:
            raise UserError(f"file is {size} bytes, the manifest says {record['bytes']} (truncated or replaced)",
                            path=file, hint="copy the bundle again, or re-export it")
        if verify == "size":
            continue
        if stamp.get(relative) != identity:
            actual = file_record(file)["sha256"]
            if actual != record["sha256"]:
                raise UserError(f"file content does not match the manifest: SHA-256 {actual}, the manifest says "
                                f"{record['sha256']} (corrupted or tampered)", path=file,
                                hint="copy the bundle again, or re-export it")
        if time.time_ns() - identity["mtime_ns"] > STAMP_SETTLE_NS:
            verified[relative] = identity
    if verify != "size" and verified != stamp:
        _write_stamp(path, verified)
    return Bundle(path, manifest)


def stamp_file(bundle_dir: Path) -> Path:
    """Where the verification stamp of ``bundle_dir`` lives: the user's cache, never the bundle
    (a stamp inside it would travel with a copy, and be as easy to edit as the files)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(bundle_dir.resolve()).encode()).hexdigest()
    return root / "mobilepeft" / "verified" / f"{key}.json"


def _identity(file: Path) -> dict[str, int]:
    st = file.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
            "device": st.st_dev}


def _read_stamp(bundle_dir: Path) -> dict[str, Any]:
    try:
        stamp = json.loads(stamp_file(bundle_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp.get("files", {}) if isinstance(stamp, dict) else {}


def _write_stamp(bundle_dir: Path, files: dict[str, Any]) -> None:
    """Best effort: without a writable cache, every open is a full verification."""
    try:
        write_json(stamp_file(bundle_dir), {"bundle": str(bundle_dir.resolve()), "files": files})
    except OSError:
        pass
