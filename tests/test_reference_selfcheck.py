"""Self-check of the independent MobileVLM reference (tests/reference_mobilevlm.py).

Its LLaMA part must match transformers' LlamaForCausalLM, its CLIP part
transformers' CLIPVisionModel, and the whole spliced forward a module-built
MobileVLM (HF CLIP -> MobileVLM-structured LDP projector -> HF LLaMA).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference_mobilevlm import (
    IMAGE_TOKEN_INDEX,
    KNOWN_VISION_TOWERS,
    PROJECTOR_PREFIX,
    VISION_PREFIX,
    clip_patch_features,
    load_reference_state,
    reference_logits,
    vision_config,
)
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

TOL = 1e-5
ROPE_THETA = 5000.0
VISION_KW = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=28,
    patch_size=7,
)


def _perturb(module: nn.Module) -> nn.Module:
    """Move every parameter (norm weights and zero biases included) off its init, so tests are sensitive."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return module.eval()


def _llama(tie: bool) -> LlamaForCausalLM:
    """Tiny GQA LLaMA with non-default rope_theta and eps."""
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=tie,
    )
    return _perturb(LlamaForCausalLM(cfg))


def _clip(hidden_act: str = "quick_gelu") -> CLIPVisionModel:
    """Tiny CLIP vision tower: 28 px, patch 7 -> 4x4 grid."""
    return _perturb(CLIPVisionModel(CLIPVisionConfig(hidden_act=hidden_act, **VISION_KW)))


class _ChannelLayerNorm(nn.LayerNorm):
    """timm LayerNormAct2d(act_layer=None): LayerNorm over channels of NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _SqueezeExcite(nn.Module):
    """torchvision SqueezeExcitation with a Hardsigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1))))
        return x * nn.functional.hardsigmoid(scale)


class _InvertedResidual(nn.Module):
    """torchvision MobileNetV3 InvertedResidual as MobileVLM configures it (expand 1, SE, HS)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                _ChannelLayerNorm(channels),
                nn.Hardswish(),
            ),
            _SqueezeExcite(channels, channels // 4),  # torchvision rounds to a multiple of 8; 16 here
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), _ChannelLayerNorm(channels)),
        )
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.residual else y


class _LDPv1(nn.Module):
    """MobileVLM LDPNetProjector (module names mirror the original code)."""

    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.model.mb_block = nn.Sequential(
            nn.Identity(), _InvertedResidual(ouc, 1), _InvertedResidual(ouc, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        g = int(n**0.5)
        x = self.model.mlp(x).permute(0, 2, 1).reshape(b, -1, g, g)
        return self.model.mb_block(x).flatten(2).permute(0, 2, 1)


class _LDPv2(nn.Module):
    """MobileVLM LDPNetV2Projector (FeatureIRLayer, TokenDownLayer, PosInjectLayer)."""

    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.mlp = nn.Sequential(nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.peg = nn.Module()
        self.peg.peg = nn.Sequential(nn.Conv2d(ouc, ouc, 3, 1, 1, bias=True, groups=ouc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        g = int(n**0.5)
        x = self.mlp.mlp(x).permute(0, 2, 1).reshape(b, -1, g, g)
        x = nn.functional.adaptive_avg_pool2d(x, (g // 2, g // 2))
        return (self.peg.peg(x) + x).flatten(2).transpose(1, 2)


def _mobilevlm_config(llama: LlamaForCausalLM, projector: str, tower: str, old_rope: bool) -> dict:
    """A MobileVLM config.json dict (old-style top-level rope_theta, or transformers-5 rope_parameters)."""
    c = llama.config
    cfg = {
        "model_type": "mobilevlm",
        "architectures": ["MobileLlamaForCausalLM"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "mm_projector_type": projector,
        "mm_hidden_size": VISION_KW["hidden_size"],
        "mm_vision_tower": tower,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "vision_tower_type": "clip",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
    }
    if old_rope:
        cfg.update(rope_theta=ROPE_THETA, rope_scaling=None)
    else:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA}
    return cfg


def _write_checkpoint(ckpt: Path, config: dict, state: dict[str, torch.Tensor], fmt: str) -> None:
    """Write config.json plus weights as `bin`, `safetensors`, or two `sharded` safetensors files."""
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "bin":
        torch.save(state, ckpt / "pytorch_model.bin")
    elif fmt == "safetensors":
        save_file(state, str(ckpt / "model.safetensors"))
    else:
        keys = sorted(state)
        shards = {
            "model-00001-of-00002.safetensors": keys[::2],
            "model-00002-of-00002.safetensors": keys[1::2],
        }
        for name, shard_keys in shards.items():
            save_file({k: state[k] for k in shard_keys}, str(ckpt / name))
        weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
        (ckpt / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, max abs diff <= TOL, and a non-trivial scale (so the check is not vacuous)."""
    assert actual.shape == expected.shape
    assert actual.dtype == torch.float32
    assert expected.abs().max() > 0.5
    assert (actual - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("old_rope", [True, False])
def test_llama_matches_transformers(tmp_path: Path, tie: bool, old_rope: bool) -> None:
    torch.manual_seed(0)
    llama = _llama(tie)
    state = dict(llama.state_dict())
    if tie:
        state.pop("lm_head.weight")
    config = _mobilevlm_config(llama, "ldpnetv2", "openai/clip-vit-large-patch14-336", old_rope)
    _write_checkpoint(tmp_path, config, state, "safetensors")
    input_ids = torch.randint(0, 100, (23,))
    with torch.no_grad():
        expected = llama(input_ids[None]).logits[0]
    _assert_close(reference_logits(tmp_path, input_ids, None), expected)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_matches_transformers(hidden_act: str) -> None:
    torch.manual_seed(0)
    clip = _clip(hidden_act)
    state = {VISION_PREFIX + k: v for k, v in clip.state_dict().items()}
    vcfg = {**VISION_KW, "num_channels": 3, "hidden_act": hidden_act, "layer_norm_eps": 1e-5}
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    _assert_close(clip_patch_features(vcfg, state, pixels, -2), expected)


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "sharded"])
@pytest.mark.parametrize("projector", ["ldpnet", "ldpnetv2"])
def test_full_forward_matches_module_model(tmp_path: Path, projector: str, fmt: str) -> None:
    torch.manual_seed(0)
    llama, clip = _llama(tie=False), _clip()
    ldp = _perturb((_LDPv1 if projector == "ldpnet" else _LDPv2)(VISION_KW["hidden_size"], 64))
    clip.config.save_pretrained(tmp_path / "clip")
    state = dict(llama.state_dict())
    state.update({VISION_PREFIX + k: v for k, v in clip.state_dict().items()})
    state.update({PROJECTOR_PREFIX + k: v for k, v in ldp.state_dict().items()})
    _write_checkpoint(tmp_path / "ckpt", _mobilevlm_config(llama, projector, "../clip", True), state, fmt)

    input_ids = torch.tensor([1, 5, 7, IMAGE_TOKEN_INDEX, 9, 11, 13, 2])
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        image = ldp(clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
        embed = llama.get_input_embeddings()
        spliced = torch.cat((embed(input_ids[None, :3]), image, embed(input_ids[None, 4:])), dim=1)
        expected = llama(inputs_embeds=spliced).logits[0]
    assert expected.shape[0] == 7 + 4  # 4x4 grid -> 2x2 image tokens
    _assert_close(reference_logits(tmp_path / "ckpt", input_ids, pixels), expected)


def test_vision_config_sources(tmp_path: Path) -> None:
    vision = CLIPVisionConfig(hidden_act="gelu", **VISION_KW)
    vision.save_pretrained(tmp_path / "ckpt" / "tower")
    CLIPConfig(vision_config=vision.to_dict()).save_pretrained(tmp_path / "full_clip")
    expected = {**VISION_KW, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    assert vision_config({"mm_vision_tower": "tower"}, tmp_path / "ckpt") == expected
    assert vision_config({"mm_vision_tower": str(tmp_path / "full_clip")}, tmp_path / "ckpt") == expected
    hub = "openai/clip-vit-large-patch14-336"
    assert vision_config({"mm_vision_tower": hub}, tmp_path / "ckpt") == KNOWN_VISION_TOWERS[hub]
    with pytest.raises(ValueError):
        vision_config({"mm_vision_tower": "no/such-tower"}, tmp_path / "ckpt")


def test_load_reference_state_returns_checkpoint_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    llama = _llama(tie=False)
    config = _mobilevlm_config(llama, "ldpnetv2", "openai/clip-vit-large-patch14-336", True)
    _write_checkpoint(tmp_path, config, dict(llama.state_dict()), "sharded")
    loaded_config, state, vcfg = load_reference_state(tmp_path)
    assert loaded_config == config
    assert set(state) == set(llama.state_dict())
    assert vcfg["image_size"] == 336
