"""Reading and writing MobileVLM checkpoint directories in their real on-disk format.

Supported weight layouts (what Hugging Face ``save_pretrained`` produces and MobileVLM ships):
``model.safetensors``; sharded ``model-0000X-of-0000N.safetensors`` + ``model.safetensors.index.json``;
``pytorch_model.bin``; sharded ``pytorch_model-0000X-of-0000N.bin`` + ``pytorch_model.bin.index.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mobilepeft.errors import UserError
from mobilepeft.io import load_plain, save_safetensors, torch_save, write_json
from mobilepeft.models.config import MobileVLMConfig
from mobilepeft.models.mobilevlm import from_checkpoint_key, to_checkpoint_key
from mobilepeft.outputs import atomic_output

#: Buffers older transformers versions saved; harmless if present, never required.
_BENIGN_EXTRA = ("embeddings.position_ids", "rotary_emb.inv_freq")
WEIGHT_FORMATS = ("safetensors", "sharded", "bin", "sharded-bin")


#: weight layouts in the order a directory is probed: (format name, the file that marks it)
_LAYOUTS = (("sharded", "model.safetensors.index.json"), ("safetensors", "model.safetensors"),
            ("sharded-bin", "pytorch_model.bin.index.json"), ("bin", "pytorch_model.bin"))


def weight_layout(path: str | Path) -> tuple[str, Path]:
    """The format of a checkpoint directory (one of ``WEIGHT_FORMATS``) and its weights/index file."""
    path = Path(path)
    for fmt, name in _LAYOUTS:
        if (path / name).is_file():
            return fmt, path / name
    raise UserError(
        "no weights found (expected model.safetensors, pytorch_model.bin or a sharded index)",
        path=path,
    )


def weight_files(path: str | Path) -> list[Path]:
    """Every file holding a directory's weights: the single file, or the index and its shards."""
    fmt, file = weight_layout(path)
    if not fmt.startswith("sharded"):
        return [file]
    return [file, *(Path(path) / shard for shard in sorted(set(json.loads(file.read_text())["weight_map"].values())))]


def largest_shard_bytes(path: str | Path) -> int:
    """Size of the biggest weight file, so a rewrite can shard the same way."""
    files = weight_files(path)
    return max(f.stat().st_size for f in files[1:] or files)  # shards, not their index


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, keyed as in the files."""
    fmt, file = weight_layout(path)
    return _read_sharded(Path(path), file) if fmt.startswith("sharded") else _read_file(file)


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    corrupt = "the file is corrupt or truncated; re-copy it"
    if file.suffix != ".safetensors":
        return load_plain(file, what="weights", corrupt_hint=corrupt,
                          refused_hint="use weights from a source you trust, preferably in .safetensors")
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:
        raise UserError(f"cannot read weights ({type(exc).__name__}: {exc})", path=file, hint=corrupt) from exc


def _read_sharded(path: Path, index_file: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError("invalid shard index (needs a 'weight_map' object)", path=index_file) from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = path / shard
        if not shard_file.is_file():
            raise UserError(f"shard {shard!r} listed in the index is missing", path=index_file)
        state.update(_read_file(shard_file))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise UserError(f"{len(missing)} tensors listed in the index are not in the shards: {missing[:5]}",
                        path=index_file)
    return state


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], config: MobileVLMConfig, where: Path) -> None:
    """Copy checkpoint tensors into ``model``; any missing/unexpected/misshaped tensor is an error."""
    expected = {to_checkpoint_key(k): v for k, v in model.state_dict().items()}
    tied = bool(config.raw.get("tie_word_embeddings", False))
    if tied:
        expected.pop("lm_head.weight", None)
    state = dict(state)
    vision_keys = [k for k in expected if k.startswith("model.vision_tower.")]
    if not any(k in state for k in vision_keys) and config.vision_tower_dir is not None:
        state.update(_vision_weights_from_dir(config.vision_tower_dir))
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and not k.endswith(_BENIGN_EXTRA)
                        and not (tied and k == "lm_head.weight"))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors: {', '.join(unexpected[:8])}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
        raise UserError("checkpoint does not match its config.json: " + "; ".join(parts), path=where,
                        hint="check that config.json (dims, layers, mm_projector_type) belongs to these weights")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise UserError(f"tensor {key} has shape {tuple(state[key].shape)}, config.json implies {tuple(ref.shape)}",
                            path=where, hint="config.json and the weights come from different models")
    internal = {from_checkpoint_key(k): state[k] for k in expected}
    model.load_state_dict(internal, strict=not tied)
    if tied:
        model.llm.tie_weights()


def _vision_weights_from_dir(vision_dir: Path) -> dict[str, torch.Tensor]:
    """Tower weights from a local CLIP directory when the MobileVLM checkpoint does not carry them."""
    try:
        state = read_state_dict(vision_dir)
    except UserError:
        return {}
    out = {}
    for k, v in state.items():
        if k.startswith("text_model.") or k in ("logit_scale", "text_projection.weight", "visual_projection.weight"):
            continue
        k = k if k.startswith("vision_model.") else "vision_model." + k
        out["model.vision_tower.vision_tower." + k] = v
    return out


def save_checkpoint(
    state: dict[str, torch.Tensor],
    config: MobileVLMConfig,
    out_dir: str | Path,
    *,
    tokenizer_dir: Path | None = None,
    weight_format: str = "safetensors",
    max_shard_bytes: int = 2 * 1024**3,
    materialize: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Path:
    """Write a MobileVLM checkpoint directory atomically.

    ``state`` is keyed with checkpoint names. A local vision-tower config directory referenced
    by a relative ``mm_vision_tower`` is copied alongside so the result is self-contained.
    With ``materialize`` (sharded formats only), ``state`` may hold meta tensors: each shard's
    tensors are created by ``materialize(key, meta)`` just before the shard is written, so a
    model far larger than memory can be written.
    """
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}")
    if materialize is not None and weight_format not in ("sharded", "sharded-bin"):
        raise ValueError("materialize needs a sharded weight format")
    out_dir = Path(out_dir)
    with atomic_output(out_dir, "checkpoint") as tmp:
        write_json(tmp / "config.json", config.to_json_dict())
        if materialize is None:
            state = {k: v.detach().contiguous() for k, v in state.items()}
        if weight_format == "safetensors":
            save_safetensors(state, tmp / "model.safetensors", metadata={"format": "pt"})
        elif weight_format == "bin":
            torch_save(state, tmp / "pytorch_model.bin")
        else:
            _write_sharded(state, tmp, weight_format, max_shard_bytes, materialize)
        if tokenizer_dir is not None:
            for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (Path(tokenizer_dir) / name).is_file():
                    shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
        tower = config.raw.get("mm_vision_tower", "")
        if config.vision_tower_dir is not None and not Path(tower).is_absolute():
            (tmp / tower).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config.vision_tower_dir / "config.json", tmp / tower / "config.json")
            # Tower weights that the main files do not carry come from the directory: take them along.
            if not any(k.startswith("model.vision_tower.") for k in state):
                try:
                    files = weight_files(config.vision_tower_dir)
                except UserError:
                    files = []  # an architecture-only CLIP directory
                for file in files:
                    shutil.copyfile(file, tmp / tower / file.name)
    return out_dir


def _write_sharded(state: dict[str, torch.Tensor], out: Path, weight_format: str, max_shard_bytes: int,
                   materialize: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    ext, index_name = (("safetensors", "model.safetensors.index.json") if weight_format == "sharded"
                       else ("bin", "pytorch_model.bin.index.json"))
    stem = "model" if ext == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
        if materialize is not None:
            shard = {k: materialize(k, v) for k, v in shard.items()}
        if ext == "safetensors":
            save_safetensors(shard, out / name, metadata={"format": "pt"})
        else:
            torch_save(shard, out / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(out / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
