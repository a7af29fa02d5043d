"""Built-in model presets written in the exact MobileVLM checkpoint format.

A preset composes the two lower layers (a model from ``models/``, a tokenizer trained on the
vocabulary of ``data/``'s synthetic dataset), so it lives above both.

``tiny`` is the embedded default: a randomly initialised MobileVLM small enough that LoRA
training runs in seconds on 2 CPU cores; ``tiny-deep`` is tiny with 8 LLM blocks (the quality
benchmark's base); ``small`` (~25M parameters) is what benchmarks time, with a SentencePiece tokenizer trained on the
synthetic dataset's vocabulary (LLaMA conventions: unk=0, <s>=1, </s>=2, byte fallback).
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from mobilepeft.data.synth import corpus_lines
from mobilepeft.io import write_json
from mobilepeft.models.checkpoint import save_checkpoint
from mobilepeft.models.config import PROJECTOR_TYPES, MobileVLMConfig
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM, to_checkpoint_key

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        # initializer_range ~ 1/sqrt(hidden): with HF's 0.02 a frozen random lm_head caps logit margins
        # near 2.5, so no adapter could make the tiny model confident; real checkpoints are trained.
        "llm": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.08),
        "vision": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                       image_size=64, patch_size=8, projection_dim=64, hidden_act="quick_gelu",
                       layer_norm_eps=1e-5, num_channels=3),
        "tokenizer_vocab": 512,
    },
    # MobileVLM V2 1.7B's real dimensions (MobileLLaMA-1.4B + CLIP ViT-L/14-336 + LDPv2), random
    # weights, written shard by shard: deployment figures at the real size (6.8 GB in fp32).
    "mobilevlm-1.7b-shape": {
        "llm": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                    num_key_value_heads=16, max_position_embeddings=2048, initializer_range=0.02),
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                       layer_norm_eps=1e-5, num_channels=3),
        "tokenizer_vocab": 512,
        "vocab_size": 32000,
        "stream": True,
    },
    # Big enough that matmuls, not Python overhead, dominate a step: used by benchmarks/.
    "small": {
        "llm": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4, max_position_embeddings=1024, initializer_range=0.044),
        "vision": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                       image_size=64, patch_size=8, projection_dim=128, hidden_act="quick_gelu",
                       layer_norm_eps=1e-5, num_channels=3),
        "tokenizer_vocab": 512,
    },
}

# tiny's widths with 8 LLM blocks: the quality benchmark's base, deep enough that early, middle and late
# layers can play different parts.
PRESETS["tiny-deep"] = {**PRESETS["tiny"], "llm": {**PRESETS["tiny"]["llm"], "num_hidden_layers": 8}}

VISION_DIR = "clip_vision"
STREAM_SHARD_BYTES = 1024**3  # streamed presets write (and hold) one shard of this size at a time


def mobilevlm_config_dict(llm: dict[str, Any], vocab_size: int, projector_type: str, mm_hidden_size: int,
                          vision_tower: str) -> dict[str, Any]:
    """A config.json with the fields a real MobileVLM checkpoint carries."""
    return {
        "architectures": ["MobileLlamaForCausalLM"],
        "model_type": "mobilevlm",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "vocab_size": vocab_size,
        **llm,
        "torch_dtype": "float32",
        "use_cache": True,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": mm_hidden_size,
        "mm_projector_type": projector_type,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower,
        "vision_tower_type": "clip",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
    }


def train_tokenizer(out_dir: Path, vocab_size: int, corpus: list[str] | None = None) -> None:
    """Train a LLaMA-style SentencePiece model on ``corpus`` (default: the built-in dataset's text)
    and write its configs."""
    import sentencepiece as spm



    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "tokenizer"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus if corpus is not None else corpus_lines()), model_prefix=str(prefix), vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
            # LLaMA's (so MobileVLM's) normaliser, no NFKC: what the apps' native tokenisers (C++,
            # Kotlin, Swift) implement.
            normalization_rule_name="identity",
        )
        (out_dir / "tokenizer.model").write_bytes(prefix.with_suffix(".model").read_bytes())
    write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 2048,
    })
    write_json(out_dir / "special_tokens_map.json",
               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})


def write_preset(preset: str, out_dir: str | Path, *, projector_type: str = "ldpnetv2", seed: int = 0,
                 weight_format: str = "safetensors", max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Create a randomly initialised MobileVLM checkpoint directory for ``preset``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return write_model(PRESETS[preset], out_dir, projector_type=projector_type, seed=seed,
                       weight_format=weight_format, max_shard_bytes=max_shard_bytes)


def write_model(spec: dict[str, Any], out_dir: str | Path, *, projector_type: str = "ldpnetv2", seed: int = 0,
                weight_format: str = "safetensors", max_shard_bytes: int = 2 * 1024**3,
                corpus: list[str] | None = None) -> Path:
    """Create a randomly initialised MobileVLM checkpoint from a spec shaped like ``PRESETS`` values.

    ``spec["vocab_size"]``, if given, sets the LLM vocabulary (e.g. LLaMA's 32000, to get a real
    model's embedding and head cost); the tokenizer still has ``tokenizer_vocab`` pieces, learnt
    from ``corpus`` (default: the built-in dataset's text).
    """
    if projector_type not in PROJECTOR_TYPES:
        raise ValueError(f"projector must be one of {PROJECTOR_TYPES}")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        train_tokenizer(staging, spec["tokenizer_vocab"], corpus)
        import sentencepiece as spm

        vocab = spec.get("vocab_size") or spm.SentencePieceProcessor(
            model_file=str(staging / "tokenizer.model")).GetPieceSize()
        (staging / VISION_DIR).mkdir()
        vision_cfg = {"model_type": "clip_vision_model", **spec["vision"]}
        write_json(staging / VISION_DIR / "config.json", vision_cfg)
        raw = mobilevlm_config_dict(spec["llm"], vocab, projector_type, spec["vision"]["hidden_size"], VISION_DIR)
        config = MobileVLMConfig.from_dict(raw, base_dir=staging)
        if spec.get("stream"):
            # Real-size shapes: build on the meta device and create each shard's tensors only when
            # the shard is written, so memory holds one shard, not the model.
            with torch.device("meta"):
                model = MobileVLMForCausalLM(config)
            state = {to_checkpoint_key(k): v for k, v in model.state_dict().items()}
            std = spec["llm"].get("initializer_range", 0.02)
            return save_checkpoint(state, config, out_dir, tokenizer_dir=staging,
                                   weight_format="sharded", max_shard_bytes=min(max_shard_bytes, STREAM_SHARD_BYTES),
                                   materialize=lambda key, meta: _random_tensor(key, meta, std, seed))
        torch.manual_seed(seed)
        model = MobileVLMForCausalLM(config)
        state = {to_checkpoint_key(k): v for k, v in model.state_dict().items()}
        return save_checkpoint(state, config, out_dir, tokenizer_dir=staging, weight_format=weight_format,
                               max_shard_bytes=max_shard_bytes)


def _random_tensor(key: str, meta: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """A deterministic random value for one tensor: norms' scales 1, biases 0, matrices N(0, std)."""
    if key.endswith(".bias"):
        return torch.zeros(meta.shape, dtype=meta.dtype)
    if meta.dim() == 1:
        return torch.ones(meta.shape, dtype=meta.dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    return torch.empty(meta.shape, dtype=meta.dtype).normal_(0.0, std, generator=generator)
