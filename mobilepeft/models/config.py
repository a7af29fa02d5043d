"""MobileVLM ``config.json``: reading, validating and deriving the sub-configs.

A MobileVLM checkpoint keeps one flat config: LLaMA fields plus the ``mm_*`` fields of the
vision side. We keep that dict verbatim (so a merged checkpoint writes back exactly what was
read) and derive a transformers ``LlamaConfig`` and ``CLIPVisionConfig`` from it.
"""

from __future__ import annotations

import json
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
        except json.JSONDecodeError as exc:
            raise UserError(f"invalid JSON ({exc.msg} at line {exc.lineno})", path=cfg_file) from exc
        return cls.from_dict(raw, base_dir=path, source=cfg_file)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], *, base_dir: Path | None = None, source: Path | None = None
    ) -> MobileVLMConfig:
        where = source or "config.json"
        for key in _LLAMA_REQUIRED:
            if key not in raw:
                raise UserError("required LLaMA field is missing", path=where, field=key)
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
        return int(self.raw.get("mm_hidden_size", self.vision["hidden_size"]))

    @property
    def select_layer(self) -> int:
        return int(self.raw.get("mm_vision_select_layer", -2))

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
        cfg = LlamaConfig(**kwargs)
        cfg._attn_implementation = "sdpa"
        return cfg

    def clip_vision_config(self) -> CLIPVisionConfig:
        cfg = CLIPVisionConfig(**self.vision)
        cfg._attn_implementation = "sdpa"
        return cfg

    def to_json_dict(self) -> dict[str, Any]:
        return dict(self.raw)


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
            data = json.loads(cfg_file.read_text())
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
