"""Adapters written by `mobilepeft train` load with peft onto a plain LlamaForCausalLM and give the
same logits as load_vlm(path, adapter=...)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_peft_equal
from safetensors.torch import load_file

import mobilepeft
from mobilepeft.adapters.files import save_adapter
from mobilepeft.adapters.inject import inject_adapters
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.models.checkpoint import read_state_dict
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer


def test_trained_lora_loads_in_peft(v2_sharded_ckpt, synth_data, tmp_path):
    cfg = TrainConfig.from_flat(dict(model=str(v2_sharded_ckpt), data=str(synth_data / "train.json"), image_folder=str(synth_data),
                      output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4, lr=5e-3, save_every=0,
                      rank=4, alpha=8, schedule="fixed"))  # scheduled ranks: tests/test_schedule.py
    cfg.validate()
    result = Trainer(cfg, progress=False).run()
    adapter = result.adapter_dir
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 4 and conf["lora_alpha"] == 8
    assert sorted(conf["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (128, 4)
    assert len(keys) == 4 * 7 * 2
    proj = load_file(str(adapter / "mm_projector.safetensors"))
    assert set(proj) == {k for k in read_state_dict(v2_sharded_ckpt) if k.startswith("model.mm_projector.")}
    assert_peft_equal(v2_sharded_ckpt, adapter)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_heterogeneous_ranks_load_in_peft(tiny_ckpt, tmp_path, use_rslora):
    """Per-module ranks/alphas (what rank scheduling produces) survive the PEFT round trip."""
    model = mobilepeft.load_vlm(tiny_ckpt)
    spec = AdapterSpec(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=use_rslora,
                       rank_pattern={"model.layers.0.self_attn.q_proj": 2, "model.layers.3.mlp.down_proj": 10},
                       alpha_pattern={"model.layers.1.self_attn.v_proj": 3.0})
    layers = inject_adapters(model, spec)
    g = torch.Generator().manual_seed(0)
    for layer in layers.values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05, generator=g)
    assert layers["llm.model.layers.0.self_attn.q_proj"].rank == 2
    assert layers["llm.model.layers.3.mlp.down_proj"].rank == 10
    save_adapter(model, spec, tmp_path / "adapter", base_model=str(tiny_ckpt), projector_trained=False)
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["rank_pattern"] == {"model.layers.0.self_attn.q_proj": 2, "model.layers.3.mlp.down_proj": 10}
    assert_peft_equal(tiny_ckpt, tmp_path / "adapter")
