"""Checkpoint directories: every real layout loads, and every broken one fails with a clear message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import mobilepeft
from mobilepeft.errors import UserError
from mobilepeft.models.checkpoint import read_state_dict, save_checkpoint, weight_layout
from mobilepeft.models.config import KNOWN_VISION_TOWERS, MobileVLMConfig


def _copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin", "sharded-bin"])
def test_every_weight_layout_round_trips(tiny_ckpt, tmp_path, fmt):
    state = read_state_dict(tiny_ckpt)
    out = save_checkpoint(state, MobileVLMConfig.from_dir(tiny_ckpt), tmp_path / fmt, tokenizer_dir=tiny_ckpt,
                          weight_format=fmt, max_shard_bytes=1_000_000)
    again = read_state_dict(out)
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in again
    assert "model.mm_projector.mlp.mlp.0.weight" in again
    mobilepeft.load_vlm(out)  # loads without complaint


def test_missing_tensor_is_named(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path)
    state = load_file(str(ckpt / "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(UserError) as err:
        mobilepeft.load_vlm(ckpt)
    assert "model.layers.1.mlp.down_proj.weight" in str(err.value)
    assert "missing" in str(err.value) and str(ckpt) in str(err.value)


def test_wrong_shape_is_named(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path)
    state = load_file(str(ckpt / "model.safetensors"))
    state["model.mm_projector.mlp.mlp.2.weight"] = torch.zeros(3, 3)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(UserError, match=r"model\.mm_projector\.mlp\.mlp\.2\.weight has shape \(3, 3\)"):
        mobilepeft.load_vlm(ckpt)


def test_unexpected_tensor_is_named(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path)
    state = load_file(str(ckpt / "model.safetensors"))
    state["model.layers.9.self_attn.q_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(UserError, match=r"unexpected tensors: model\.layers\.9\.self_attn\.q_proj\.weight"):
        mobilepeft.load_vlm(ckpt)


def test_unknown_projector_type(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_projector_type"] = "mlp2x_gelu"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as err:
        mobilepeft.load_vlm(ckpt)
    msg = str(err.value)
    assert "mm_projector_type" in msg and "mlp2x_gelu" in msg and "ldpnetv2" in msg and "config.json" in msg


def test_corrupt_and_missing_weights(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path)
    blob = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(UserError, match="cannot read weights"):
        mobilepeft.load_vlm(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights found"):
        mobilepeft.load_vlm(ckpt)


def test_missing_shard_is_named(tiny_ckpt, tmp_path):
    out = save_checkpoint(read_state_dict(tiny_ckpt), MobileVLMConfig.from_dir(tiny_ckpt), tmp_path / "sh",
                          tokenizer_dir=tiny_ckpt, weight_format="sharded", max_shard_bytes=1_000_000)
    shard = sorted(out.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=shard.name):
        mobilepeft.load_vlm(out)


def test_hub_vision_tower_name_uses_known_config():
    raw = json.loads(json.dumps({
        "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
        "vocab_size": 32000, "mm_projector_type": "ldpnetv2", "mm_hidden_size": 1024,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    cfg = MobileVLMConfig.from_dict(raw)
    assert cfg.vision == KNOWN_VISION_TOWERS["openai/clip-vit-large-patch14-336"]
    assert cfg.grid_size == 24 and cfg.num_image_tokens == 144
    raw["mm_vision_tower"] = "/somewhere/else/clip-vit-large-patch14-336"
    assert MobileVLMConfig.from_dict(raw).image_size == 336
    raw["mm_vision_tower"] = "google/siglip-so400m"
    with pytest.raises(UserError, match="mm_vision_tower"):
        MobileVLMConfig.from_dict(raw)


def test_vision_weights_from_local_clip_dir(tiny_ckpt, tmp_path):
    """A checkpoint without the tower weights takes them from the local CLIP directory it names."""
    ckpt = _copy(tiny_ckpt, tmp_path)
    state = load_file(str(ckpt / "model.safetensors"))
    prefix = "model.vision_tower.vision_tower."
    tower = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    save_file(tower, str(ckpt / "clip_vision" / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith(prefix)}, str(ckpt / "model.safetensors"))
    a = mobilepeft.load_vlm(tiny_ckpt)
    b = mobilepeft.load_vlm(ckpt)
    for (n, p), (_, q) in zip(a.vision_tower.named_parameters(), b.vision_tower.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_atomic_dir_keeps_old_contents_on_crash(tmp_path):
    from mobilepeft.io import atomic_dir

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_streamed_preset_writes_shard_by_shard_and_loads(tmp_path):
    """Real-size presets are built on the meta device and materialised one shard at a time; the
    same code path on tiny dimensions must give a loadable, deterministic checkpoint."""
    import copy

    from mobilepeft.presets import PRESETS, write_model

    spec = dict(copy.deepcopy(PRESETS["tiny"]), stream=True)
    a = write_model(spec, tmp_path / "a", seed=3, max_shard_bytes=1_000_000)
    b = write_model(spec, tmp_path / "b", seed=3, max_shard_bytes=1_000_000)
    assert weight_layout(a)[0] == "sharded" and len(list(a.glob("model-*.safetensors"))) > 2
    model = mobilepeft.load_vlm(a)
    llm = model.llm.model
    assert torch.equal(llm.norm.weight, torch.ones_like(llm.norm.weight))
    assert abs(float(llm.layers[0].mlp.up_proj.weight.std()) - 0.08) < 0.01  # the spec's initializer_range
    assert read_state_dict(a).keys() == read_state_dict(b).keys()
    assert all(torch.equal(x, read_state_dict(b)[k]) for k, x in read_state_dict(a).items())
