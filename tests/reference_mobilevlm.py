"""Independent, pure-functional MobileVLM forward pass used as a test oracle.

Everything here is written with plain torch ops straight from the checkpoint's
state-dict tensors (no ``mobilepeft`` imports, no transformers model classes),
so that agreement with ``mobilepeft.load_vlm`` is evidence, not tautology.
All maths runs in float32 on the tensors' device (normally CPU).

Conventions (see docs/training.md):
- LLaMA: HF ``rotate_half`` RoPE with ``rope_theta``, GQA, RMSNorm in fp32,
  SiLU-gated MLP, causal attention, position ids ``0..T'-1``.
- CLIP: ``hidden_states[mm_vision_select_layer]`` where ``hidden_states[0]`` is
  the pre-layernormed embedding output; no post-layernorm; CLS dropped.
- LDP v2 pools the ``g x g`` grid to ``(g//2) x (g//2)`` (12x12 at 336 px).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

IMAGE_TOKEN_INDEX = -200
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."

# transformers' CLIPVisionConfig defaults, used for fields a config.json omits.
CLIP_VISION_DEFAULTS: dict = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
KNOWN_VISION_TOWERS: dict[str, dict] = {
    "openai/clip-vit-large-patch14-336": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 336,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}


# ----------------------------------------------------------------- loading


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """One ``.safetensors`` or ``.bin`` file as a CPU state dict."""
    if path.name.endswith(".safetensors"):
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF-style checkpoint dir (sharded index, safetensors, or bin)."""
    ckpt = Path(ckpt_dir)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = ckpt / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_weight_file(ckpt / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (ckpt / name).is_file():
            return _load_weight_file(ckpt / name)
    raise FileNotFoundError(f"no model weights found in {ckpt}")


def vision_config(config: dict, ckpt_dir: str | Path) -> dict:
    """CLIP vision config for ``config['mm_vision_tower']``.

    A directory (absolute, or relative to the checkpoint dir) holding a
    ``config.json`` wins; its fields may sit at top level (CLIPVisionConfig) or
    under ``vision_config`` (CLIPConfig). Otherwise the name must be a known hub id.
    """
    tower = config["mm_vision_tower"]
    tower_config = Path(ckpt_dir) / tower / "config.json"  # an absolute `tower` replaces ckpt_dir
    if tower_config.is_file():
        raw = json.loads(tower_config.read_text())
        raw = raw.get("vision_config", raw)
        return {key: raw.get(key, default) for key, default in CLIP_VISION_DEFAULTS.items()}
    if tower in KNOWN_VISION_TOWERS:
        return dict(KNOWN_VISION_TOWERS[tower])
    raise ValueError(f"unknown vision tower {tower!r} (not a directory with config.json, not a known hub id)")


def load_reference_state(ckpt_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config.json dict, full state dict with checkpoint key names, CLIP vision config dict)."""
    config = json.loads((Path(ckpt_dir) / "config.json").read_text())
    return config, load_weights(ckpt_dir), vision_config(config, ckpt_dir)


# ----------------------------------------------------------------- shared ops


def _w(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """A state-dict tensor as float32."""
    return state[key].float()


def _linear(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """``x @ W.T (+ b)`` with ``W``/``b`` read from ``prefix.weight``/``prefix.bias``."""
    return F.linear(x, _w(state, prefix + ".weight"), _w(state, prefix + ".bias") if bias else None)


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """transformers ACT2FN semantics for the activations MobileVLM uses."""
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    raise NotImplementedError(f"activation {name!r}")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Eager softmax attention on ``[B, heads, T, d]`` tensors, scale ``d**-0.5``."""
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        t = scores.shape[-1]
        future = torch.ones(t, t, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, T, h*d]`` -> ``[B, h, T, d]``."""
    b, t, _ = x.shape
    return x.view(b, t, -1, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, T, d]`` -> ``[B, T, h*d]``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


# ----------------------------------------------------------------- LLaMA


def _rope_theta(config: dict) -> float:
    """``rope_theta`` from an old-style (top-level) or transformers-5 (``rope_parameters``) config."""
    params = config.get("rope_parameters") or {}
    if config.get("rope_scaling") or params.get("rope_type", "default") != "default":
        raise NotImplementedError("only default (unscaled) RoPE is supported")
    return float(config.get("rope_theta", params.get("rope_theta", 10000.0)))


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaMA RMSNorm (fp32)."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF rotate_half: ``[x1, x2] -> [-x2, x1]`` over the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[T, head_dim]`` for positions ``0..T-1`` (HF layout: frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.arange(seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def llama_logits(config: dict, state: dict[str, torch.Tensor], inputs_embeds: torch.Tensor) -> torch.Tensor:
    """LLaMA decoder + LM head on one sequence of embeddings ``[T, hidden]`` -> logits ``[T, vocab]``."""
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    eps = config["rms_norm_eps"]
    attn_bias = config.get("attention_bias", False)
    mlp_bias = config.get("mlp_bias", False)
    act = config.get("hidden_act", "silu")

    x = inputs_embeds.float()[None]  # [1, T, hidden]
    cos, sin = _rope_cos_sin(x.shape[1], head_dim, _rope_theta(config), x.device)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, _w(state, p + "input_layernorm.weight"), eps)
        q = _split_heads(_linear(state, p + "self_attn.q_proj", h, attn_bias), head_dim)
        k = _split_heads(_linear(state, p + "self_attn.k_proj", h, attn_bias), head_dim)
        v = _split_heads(_linear(state, p + "self_attn.v_proj", h, attn_bias), head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # GQA: query head j reads kv head j // (n_heads // n_kv)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        x = x + _linear(
            state, p + "self_attn.o_proj", _merge_heads(_attention(q, k, v, causal=True)), attn_bias
        )
        h = _rms_norm(x, _w(state, p + "post_attention_layernorm.weight"), eps)
        gated = _activation(act, _linear(state, p + "mlp.gate_proj", h, mlp_bias)) * _linear(
            state, p + "mlp.up_proj", h, mlp_bias
        )
        x = x + _linear(state, p + "mlp.down_proj", gated, mlp_bias)
    x = _rms_norm(x, _w(state, "model.norm.weight"), eps)
    head_key = "model.embed_tokens.weight" if config.get("tie_word_embeddings", False) else "lm_head.weight"
    return F.linear(x, _w(state, head_key))[0]


# ----------------------------------------------------------------- CLIP


def clip_patch_features(
    vcfg: dict,
    state: dict[str, torch.Tensor],
    pixel_values: torch.Tensor,
    select_layer: int,
    prefix: str = VISION_PREFIX,
) -> torch.Tensor:
    """CLIP ``hidden_states[select_layer][:, 1:]`` for ``pixel_values [B, C, H, W]`` -> ``[B, P, hidden]``."""
    n_layers = vcfg["num_hidden_layers"]
    depth = select_layer % (n_layers + 1)  # index into the (n_layers + 1)-long hidden_states tuple
    eps = vcfg["layer_norm_eps"]
    dim = vcfg["hidden_size"]
    head_dim = dim // vcfg["num_attention_heads"]
    patch = vcfg["patch_size"]
    if pixel_values.shape[-2:] != (vcfg["image_size"], vcfg["image_size"]):
        raise ValueError(
            f"pixel_values {tuple(pixel_values.shape)} do not match image_size {vcfg['image_size']}"
        )

    def ln(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x, (dim,), _w(state, prefix + name + ".weight"), _w(state, prefix + name + ".bias"), eps
        )

    patches = F.conv2d(
        pixel_values.float(), _w(state, prefix + "embeddings.patch_embedding.weight"), stride=patch
    )
    patches = patches.flatten(2).transpose(1, 2)  # [B, P, dim]
    cls = _w(state, prefix + "embeddings.class_embedding").expand(patches.shape[0], 1, dim)
    x = torch.cat((cls, patches), dim=1)
    x = x + _w(state, prefix + "embeddings.position_embedding.weight")
    x = ln("pre_layrnorm", x)
    for i in range(depth):
        p = f"encoder.layers.{i}."
        h = ln(p + "layer_norm1", x)
        q, k, v = (
            _split_heads(_linear(state, prefix + p + f"self_attn.{n}_proj", h), head_dim) for n in "qkv"
        )
        x = x + _linear(
            state, prefix + p + "self_attn.out_proj", _merge_heads(_attention(q, k, v, causal=False))
        )
        h = ln(p + "layer_norm2", x)
        x = x + _linear(
            state,
            prefix + p + "mlp.fc2",
            _activation(vcfg["hidden_act"], _linear(state, prefix + p + "mlp.fc1", h)),
        )
    return x[:, 1:]


# ----------------------------------------------------------------- projectors


def _channel_layer_norm(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel dim of ``[B, C, H, W]`` (timm LayerNormAct2d, eps 1e-5, no act)."""
    y = F.layer_norm(
        x.permute(0, 2, 3, 1), (x.shape[1],), _w(state, prefix + ".weight"), _w(state, prefix + ".bias"), 1e-5
    )
    return y.permute(0, 3, 1, 2)


def _inverted_residual(
    state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, stride: int
) -> torch.Tensor:
    """torchvision MobileNetV3 InvertedResidual (expand ratio 1, SE with Hardsigmoid, Hardswish)."""
    dw = _w(state, prefix + "block.0.0.weight")
    y = F.conv2d(x, dw, stride=stride, padding=(dw.shape[-1] - 1) // 2, groups=x.shape[1])
    y = F.hardswish(_channel_layer_norm(state, prefix + "block.0.1", y))
    scale = F.adaptive_avg_pool2d(y, 1)
    scale = F.relu(
        F.conv2d(scale, _w(state, prefix + "block.1.fc1.weight"), _w(state, prefix + "block.1.fc1.bias"))
    )
    scale = F.conv2d(scale, _w(state, prefix + "block.1.fc2.weight"), _w(state, prefix + "block.1.fc2.bias"))
    y = y * F.hardsigmoid(scale)
    y = _channel_layer_norm(state, prefix + "block.2.1", F.conv2d(y, _w(state, prefix + "block.2.0.weight")))
    return y + x if stride == 1 else y


def _tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    """``[B, g*g, C]`` -> ``[B, C, g, g]``."""
    b, n, c = x.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    return x.transpose(1, 2).reshape(b, c, g, g)


def project_image_features(
    config: dict, state: dict[str, torch.Tensor], features: torch.Tensor
) -> torch.Tensor:
    """MobileVLM LDP projector (``ldpnet`` V1 or ``ldpnetv2`` V2): ``[B, P, mm_hidden]`` -> ``[B, N, hidden]``."""
    kind = config["mm_projector_type"]
    x = features.float()
    if kind == "ldpnet":
        p = PROJECTOR_PREFIX + "model."
        x = _linear(state, p + "mlp.3", F.gelu(_linear(state, p + "mlp.1", x)))
        grid = _tokens_to_grid(x)
        grid = _inverted_residual(state, p + "mb_block.1.", grid, stride=1)
        grid = _inverted_residual(state, p + "mb_block.2.", grid, stride=2)
    elif kind == "ldpnetv2":
        p = PROJECTOR_PREFIX
        x = _linear(state, p + "mlp.mlp.2", F.gelu(_linear(state, p + "mlp.mlp.0", x)))
        grid = _tokens_to_grid(x)
        grid = F.adaptive_avg_pool2d(grid, grid.shape[-1] // 2)
        peg_w = _w(state, p + "peg.peg.0.weight")
        grid = grid + F.conv2d(
            grid,
            peg_w,
            _w(state, p + "peg.peg.0.bias"),
            padding=(peg_w.shape[-1] - 1) // 2,
            groups=grid.shape[1],
        )
    else:
        raise NotImplementedError(f"mm_projector_type {kind!r}")
    return grid.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------- full model


@torch.no_grad()
def reference_logits_from_state(
    config: dict,
    state: dict[str, torch.Tensor],
    vcfg: dict,
    input_ids: torch.LongTensor,
    pixel_values: torch.Tensor | None,
) -> torch.Tensor:
    """``reference_logits`` on an already loaded ``load_reference_state`` triple."""
    if input_ids.dim() != 1:
        raise ValueError("input_ids must be 1-D (a single sequence)")
    embed = _w(state, "model.embed_tokens.weight")
    slots = (input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if pixel_values is None:
        if slots:
            raise ValueError("input_ids contain an image slot but pixel_values is None")
        return llama_logits(config, state, embed[input_ids])
    if len(slots) != 1 or pixel_values.shape[0] != 1:
        raise ValueError("need exactly one image slot (-200) and pixel_values of batch 1")
    if config.get("mm_vision_select_feature", "patch") != "patch":
        raise NotImplementedError("only mm_vision_select_feature='patch' is supported")
    features = clip_patch_features(vcfg, state, pixel_values, config.get("mm_vision_select_layer", -2))
    image = project_image_features(config, state, features)[0]
    slot = slots[0]
    spliced = torch.cat((embed[input_ids[:slot]], image, embed[input_ids[slot + 1 :]]), dim=0)
    return llama_logits(config, state, spliced)


def reference_logits(
    ckpt_dir: str | Path, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None
) -> torch.Tensor:
    """Float32 logits ``[T', vocab]`` of a MobileVLM checkpoint for one sequence.

    ``input_ids [T]`` may hold one ``-200`` image slot, replaced by the projected
    image tokens of ``pixel_values [1, 3, H, W]``; without an image pass ``None``.
    """
    config, state, vcfg = load_reference_state(ckpt_dir)
    return reference_logits_from_state(config, state, vcfg, input_ids, pixel_values)
