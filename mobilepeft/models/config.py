"""MobileVLM ``config.json``: reading, validating and deriving the sub-configs.

A MobileVLM checkpoint keeps one flat config: LLaMA fields plus the ``mm_*`` fields of the
vision side. We keep that dict verbatim (so a merged checkpoint writes back exactly what was
read) and derive a transformers ``LlamaConfig`` and ``CLIPVisionConfig`` from it.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig

from mobilepeft.errors import UserError

PROJECTOR_TYPES = ("ldpnet", "ldpnetv2")

#: Configs of vision towers a checkpoint may name by hub id. We never download: the weights come
#: from the MobileVLM checkpoint itself, which stores the tower under model.vision_tower.*.
KNOWN_VISION_TOWERS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
    },
}

_LLAMA_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


@dataclass
class MobileVLMConfig:
    """The checkpoint's config.json plus the resolved CLIP vision config."""

    raw: dict[str, Any]
    vision: dict[str, Any]
    vision_tower_dir: Path | None = None
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def from_dir(cls, path: str | Path) -> MobileVLMConfig:
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UserError(
                "config.json not found", path=path, hint="pass a MobileVLM checkpoint directory"
            )
        try:
            raw = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"invalid JSON ({exc})", path=cfg_file) from exc
        return cls.from_dict(raw, base_dir=path, source=cfg_file)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], *, base_dir: Path | None = None, source: Path | None = None
    ) -> MobileVLMConfig:
        where = source or "config.json"
        if not isinstance(raw, dict):
            raise UserError(f"top level must be a JSON object, got {type(raw).__name__}", path=where)
        for key in _LLAMA_REQUIRED:
            if key not in raw:
                raise UserError("required LLaMA field is missing", path=where, field=key)
        _check_fields(raw, where, LLM_FIELDS)
        ptype = raw.get("mm_projector_type")
        if ptype not in PROJECTOR_TYPES:
            raise UserError(
                f"unknown projector type {ptype!r}",
                path=where,
                field="mm_projector_type",
                hint=f"MobileVLM V1 uses 'ldpnet', V2 'ldpnetv2' (supported: {', '.join(PROJECTOR_TYPES)})",
            )
        if raw.get("mm_vision_select_feature", "patch") != "patch":
            raise UserError(
                "only 'patch' features (CLS token dropped) are supported",
                path=where,
                field="mm_vision_select_feature",
            )
        vision, vision_dir = _resolve_vision_tower(raw, base_dir, where)
        for key in ("hidden_size", "num_attention_heads", "image_size", "patch_size"):
            if key not in vision:
                raise UserError(f"the vision tower's config has no {key}", path=vision_dir or where, field=key)
        _check_fields(vision, vision_dir / "config.json" if vision_dir else where, VISION_FIELDS, prefix="vision ")
        return cls(raw=dict(raw), vision=vision, vision_tower_dir=vision_dir, source=source)

    # --- derived views -------------------------------------------------------------------
    @property
    def projector_type(self) -> str:
        return self.raw["mm_projector_type"]

    @property
    def hidden_size(self) -> int:
        return int(self.raw["hidden_size"])

    @property
    def mm_hidden_size(self) -> int:
        value = self.raw.get("mm_hidden_size")  # absent or null: the tower's width
        return int(self.vision["hidden_size"] if value is None else value)

    @property
    def select_layer(self) -> int:
        value = self.raw.get("mm_vision_select_layer")  # absent or null: LLaVA's default, the second last
        return -2 if value is None else int(value)

    @property
    def image_size(self) -> int:
        return int(self.vision["image_size"])

    @property
    def grid_size(self) -> int:
        return self.image_size // int(self.vision["patch_size"])

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image occupies in the LLM sequence after the LDP projector (2x downsampling)."""
        return ((self.grid_size + 1) // 2) ** 2

    def llama_config(self) -> LlamaConfig:
        keys = (
            "hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads "
            "vocab_size max_position_embeddings rms_norm_eps rope_theta rope_scaling rope_parameters "
            "hidden_act tie_word_embeddings attention_bias mlp_bias head_dim bos_token_id eos_token_id "
            "pad_token_id initializer_range"
        ).split()
        kwargs = {k: self.raw[k] for k in keys if k in self.raw and self.raw[k] is not None}
        with _named_config_errors(self.source or "config.json"):
            cfg = LlamaConfig(**kwargs)
        cfg._attn_implementation = "sdpa"
        return cfg

    def clip_vision_config(self) -> CLIPVisionConfig:
        where = self.vision_tower_dir / "config.json" if self.vision_tower_dir else self.source or "config.json"
        with _named_config_errors(where):
            cfg = CLIPVisionConfig(**self.vision)
        cfg._attn_implementation = "sdpa"
        return cfg

    def to_json_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_activation(v: Any) -> bool:
    from transformers.activations import ACT2FN

    return isinstance(v, str) and v in ACT2FN


#: what a field must hold: (test, description for the message)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "layer": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v != 0,
              "a non-zero integer (a layer index; negative counts from the end)"),
    "token": (lambda v: v is None or _is_token(v), "a token id (a non-negative integer) or null"),
    "tokens": (lambda v: v is None or _is_token(v) or (isinstance(v, list) and bool(v) and all(map(_is_token, v))),
               "a token id (a non-negative integer), a list of them, or null"),
    "epsilon": (lambda v: _is_number(v) and 0 < v < 1, "a number between 0 and 1"),
    "probability": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "positive": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "non_negative": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "text": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "mapping": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "activation": (_is_activation, "an activation name known to transformers (e.g. silu, gelu, quick_gelu)"),
}

#: every config.json field mobilepeft reads (the others are kept verbatim and never interpreted)
LLM_FIELDS = {
    "hidden_size": "size", "intermediate_size": "size", "num_hidden_layers": "size", "num_attention_heads": "size",
    "vocab_size": "size", "num_key_value_heads": "size", "max_position_embeddings": "size", "head_dim": "size",
    "rms_norm_eps": "epsilon", "rope_theta": "positive", "hidden_act": "activation", "tie_word_embeddings": "bool",
    "attention_bias": "bool", "mlp_bias": "bool", "bos_token_id": "token", "eos_token_id": "tokens",
    "pad_token_id": "token", "initializer_range": "non_negative", "rope_scaling": "mapping",
    "rope_parameters": "mapping", "mm_hidden_size": "size", "mm_vision_select_layer": "layer",
    "mm_vision_tower": "text", "vision_tower_type": "text", "mm_vision_select_feature": "text",
}
VISION_FIELDS = {
    "hidden_size": "size", "intermediate_size": "size", "num_hidden_layers": "size", "num_attention_heads": "size",
    "image_size": "size", "patch_size": "size", "projection_dim": "size", "num_channels": "size",
    "hidden_act": "activation", "layer_norm_eps": "epsilon", "attention_dropout": "probability",
    "initializer_range": "non_negative",
}


def _check_fields(raw: dict[str, Any], where: Path | str, table: dict[str, str], prefix: str = "") -> None:
    """Each field read has the type and range it needs, and attention heads divide what they
    split, named field by field (a wrong value otherwise surfaces as a traceback deep inside
    transformers). Fields the optional ones may be null."""
    for key, kind in table.items():
        if key not in raw or (raw[key] is None and key not in _REQUIRED_ANYWHERE):
            continue
        test, wants = _KINDS[kind]
        if not test(raw[key]):
            raise UserError(f"{prefix}{key} must be {wants}, got {raw[key]!r}", path=where, field=key)
    heads = raw["num_attention_heads"]
    if raw["hidden_size"] % heads:
        raise UserError(f"{prefix}hidden_size {raw['hidden_size']} is not divisible by num_attention_heads {heads}",
                        path=where, field="num_attention_heads")
    kv = raw.get("num_key_value_heads")
    if kv is not None and heads % kv:
        raise UserError(f"num_attention_heads {heads} is not divisible by num_key_value_heads {kv}", path=where,
                        field="num_key_value_heads")


#: fields that must be present and non-null in config.json (LLaMA's dims) and in the CLIP config
_REQUIRED_ANYWHERE = _LLAMA_REQUIRED + ("image_size", "patch_size")


@contextlib.contextmanager
def _named_config_errors(where: Path | str) -> Iterator[None]:
    """transformers validates its config classes too, with rules of its own (e.g. initializer_range
    in [0, 1]); its refusal becomes ours, naming the file and the field it names."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        yield
    except (TypeError, ValueError, StrictDataclassError) as exc:
        match = re.search(r"field '(\w+)'", str(exc))
        raise UserError(f"transformers refuses the value: {str(exc).strip().splitlines()[-1]}", path=where,
                        field=match.group(1) if match else None) from exc


def _resolve_vision_tower(
    raw: dict[str, Any], base_dir: Path | None, where: Path | str
) -> tuple[dict[str, Any], Path | None]:
    """Find the CLIP vision config: a local directory (absolute or relative to the checkpoint)
    or a known hub name. Never downloads."""
    name = raw.get("mm_vision_tower")
    if not name:
        raise UserError("missing vision tower", path=where, field="mm_vision_tower")
    if raw.get("vision_tower_type", "clip") != "clip":
        raise UserError(
            f"unsupported vision tower type {raw.get('vision_tower_type')!r} (only 'clip')",
            path=where,
            field="vision_tower_type",
        )
    candidates = [Path(name)] if Path(name).is_absolute() else []
    if base_dir is not None and not Path(name).is_absolute():
        candidates.append(Path(base_dir) / name)
    for cand in candidates:
        cfg_file = cand / "config.json"
        if cfg_file.is_file():
            try:
                data = json.loads(cfg_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"invalid JSON ({exc})", path=cfg_file) from exc
            if not isinstance(data, dict):
                raise UserError("top level must be a JSON object", path=cfg_file)
            vision = data.get("vision_config", data) if data.get("model_type") == "clip" else data
            return _clean_vision_dict(vision), cand
    for known, cfg in KNOWN_VISION_TOWERS.items():
        if name == known or name.rstrip("/").endswith(known.split("/")[-1]):
            return dict(cfg), None
    raise UserError(
        f"vision tower {name!r} is neither a local directory with a config.json nor a known model "
        f"({', '.join(KNOWN_VISION_TOWERS)})",
        path=where,
        field="mm_vision_tower",
        hint="point mm_vision_tower at a local CLIP directory (absolute or relative to the checkpoint)",
    )


def _clean_vision_dict(vision: dict[str, Any]) -> dict[str, Any]:
    keep = set(KNOWN_VISION_TOWERS["openai/clip-vit-large-patch14-336"]) | {"attention_dropout", "initializer_range"}
    return {k: v for k, v in vision.items() if k in keep}
