"""Every adapter method: identity at init, exact merge, exact lowering to PEFT LoRA, true parameter
counts, and each method's own mechanics (Hydra branches, DMLoRA schedule, AdaRing sharing)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import assert_peft_equal
from safetensors.torch import load_file

import mobilepeft
from mobilepeft.adapters.files import save_adapter
from mobilepeft.adapters.inject import adapter_layers, adapter_parameters, inject_adapters
from mobilepeft.adapters.methods.adaring import AdaRingLinear
from mobilepeft.adapters.methods.dmlora import DMLoRALinear
from mobilepeft.adapters.methods.multihead import MultiHeadLinear
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.summary import summarize_adapter
from mobilepeft.data import SupervisedDataset, collate_batch, load_llava
from mobilepeft.merge import lower_adapter, merge_adapter
from mobilepeft.models.checkpoint import read_state_dict, weight_layout
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer

METHODS = ["lora", "multihead", "dmlora", "adaring"]
CHECKPOINTS = ["tiny_ckpt", "v1_bin_ckpt", "v2_sharded_ckpt"]


def _image_batch(model, data_dir, n=3):
    """A padded batch of validation samples with images: the path through tower and projector."""
    convs, _ = load_llava(data_dir / "val.json", data_dir)
    ds = SupervisedDataset(convs[:n], model.tokenizer, data_dir, model.config.image_size,
                           model.config.num_image_tokens, max_length=256)
    return collate_batch([ds[i] for i in range(n)], pad_id=model.tokenizer.pad_id)


def _logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], pixel_values=batch["pixel_values"],
                     attention_mask=batch["attention_mask"]).logits


def _train(ckpt, data, out, method, steps=4, **kw):
    cfg = TrainConfig.from_flat(dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data), output_dir=str(out),
                      adapter=method, rank=4, alpha=8, max_steps=steps, batch_size=4, lr=1e-2, max_length=256,
                      save_every=0, **kw))
    cfg.validate()
    return Trainer(cfg, progress=False).run()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ckpt_name", CHECKPOINTS)
def test_identity_at_init_exact_merge_and_lowering(method, ckpt_name, synth_data, tmp_path, request):
    ckpt = request.getfixturevalue(ckpt_name)
    base = mobilepeft.load_vlm(ckpt)
    batch = _image_batch(base, synth_data)
    base_logits = _logits(base, batch)

    # (c) at initialisation the adapted model is the base model, bit for bit
    fresh = mobilepeft.load_vlm(ckpt)
    inject_adapters(fresh, AdapterSpec(method=method, rank=4, alpha=8))
    assert torch.equal(_logits(fresh.eval(), batch), base_logits)

    result = _train(ckpt, synth_data, tmp_path / "run", method)
    adapted = mobilepeft.load_vlm(ckpt, adapter=result.adapter_dir)
    adapter_logits = _logits(adapted, batch)
    assert (adapter_logits - base_logits).abs().max().item() > 1e-3, "training must have changed the model"

    # (a) the merged checkpoint, reloaded from disk, gives the adapter model's logits (image path included)
    merged_dir = merge_adapter(ckpt, result.adapter_dir, tmp_path / "merged")
    merged = mobilepeft.load_vlm(merged_dir)
    assert (_logits(merged, batch) - adapter_logits).abs().max().item() <= 1e-4
    # ... in the input's own format: same layout, key names and dtypes, config, tokenizer
    assert weight_layout(merged_dir)[0] == weight_layout(ckpt)[0]
    src, out = read_state_dict(ckpt), read_state_dict(merged_dir)
    assert src.keys() == out.keys() and all(src[k].dtype == out[k].dtype for k in src)
    assert json.loads((merged_dir / "config.json").read_text()) == json.loads((ckpt / "config.json").read_text())
    assert (merged_dir / "tokenizer.model").read_bytes() == (ckpt / "tokenizer.model").read_bytes()

    # (b) the lowered PEFT LoRA gives the same text-only logits on a plain LlamaForCausalLM
    lora_dir = lower_adapter(result.adapter_dir, tmp_path / "lora", ckpt)
    assert_peft_equal(ckpt, lora_dir, ours_adapter=result.adapter_dir)
    # ... and with the projector it carries, the same multimodal model through load_vlm
    assert (_logits(mobilepeft.load_vlm(ckpt, adapter=lora_dir), batch) - adapter_logits).abs().max().item() <= 1e-4


def _random_adapter(model, spec, seed=0):
    inject_adapters(model, spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("method", METHODS)
def test_vision_targets_with_bias_merge_and_lower_exactly(method, v1_bin_ckpt, synth_data, tmp_path):
    """CLIP linears have biases: Hydra's sequential branch shifts them, and lowering must carry that."""
    spec = AdapterSpec(method=method, rank=4, alpha=8, target_modules=["q_proj", "vision:q_proj", "vision:fc2"])
    model = _random_adapter(mobilepeft.load_vlm(v1_bin_ckpt), spec)
    save_adapter(model, spec, tmp_path / "adapter", base_model=str(v1_bin_ckpt), projector_trained=False)
    batch = _image_batch(model, synth_data)
    reference = _logits(mobilepeft.load_vlm(v1_bin_ckpt, adapter=tmp_path / "adapter"), batch)
    assert (reference - _logits(model.eval(), batch)).abs().max().item() <= 1e-5  # save/load round trip
    merged = mobilepeft.load_vlm(merge_adapter(v1_bin_ckpt, tmp_path / "adapter", tmp_path / "merged"))
    assert (_logits(merged, batch) - reference).abs().max().item() <= 1e-4
    lora_dir = lower_adapter(tmp_path / "adapter", tmp_path / "lora")
    lowered = mobilepeft.load_vlm(v1_bin_ckpt, adapter=lora_dir)
    assert (_logits(lowered, batch) - reference).abs().max().item() <= 1e-4
    cfg = json.loads((lora_dir / "adapter_config.json").read_text())
    assert cfg["lora_bias"] is (method == "multihead")


def _expected_count(method, layers, spec):
    """The parameter formulas of docs/methods.md, from module shapes alone."""
    r = spec.rank
    if method == "lora":
        return sum(r * (m.in_features + m.out_features) for m in layers)
    if method == "multihead":
        rp, rs = spec.settings.branch_ranks(r, r)
        return sum(rp * (m.in_features + m.out_features) + rs * 2 * m.out_features for m in layers)
    if method == "dmlora":
        return sum(r * (m.in_features + m.out_features) + 1 for m in layers)
    groups: dict[str, list] = {}
    for m in layers:
        groups.setdefault(m.group, []).append(m)
    total = 0
    for members in groups.values():
        m, big_r = members[0], members[0].cores.ring_rank
        total += big_r * m.out_features * big_r + big_r * m.in_features * big_r + len(members) * big_r * big_r
    return total


@pytest.mark.parametrize("method", METHODS)
def test_parameter_counts_match_the_formulas(method, tiny_ckpt, tmp_path):
    spec = AdapterSpec.from_dict(dict(method=method, rank=6, alpha=12, ring_rank=3, ring_rank_pattern={"down_proj": 5},
                                      target_modules=["q_proj", "k_proj", "down_proj"]))
    model = _random_adapter(mobilepeft.load_vlm(tiny_ckpt), spec)
    layers = list(adapter_layers(model).values())
    expected = _expected_count(method, layers, spec)
    save_adapter(model, spec, tmp_path / "a", base_model=str(tiny_ckpt), projector_trained=False)
    summary = summarize_adapter(tmp_path / "a")
    assert summary.trainable_parameters == expected
    assert summary.lora_parameters_at_nominal_rank == 6 * sum(m.in_features + m.out_features for m in layers)
    if method != "lora":  # native files hold exactly the trainable parameters
        assert sum(t.numel() for t in load_file(str(tmp_path / "a" / "adapter_model.safetensors")).values()) == expected
    if method == "adaring":
        assert {g: v["ring_rank"] for g, v in summary.groups.items()} == {"q_proj": 3, "k_proj": 3, "down_proj": 5}
        assert all(v["layers"] == 4 for v in summary.groups.values())


def test_multihead_merge_formula_and_unmerge(tiny_ckpt):
    model = _random_adapter(mobilepeft.load_vlm(tiny_ckpt), AdapterSpec(method="multihead", rank=5, alpha=10,
                                                                         target_modules=["o_proj"]))
    layer = adapter_layers(model)["llm.model.layers.1.self_attn.o_proj"]
    assert isinstance(layer, MultiHeadLinear) and (layer.rank_parallel, layer.rank_sequential) == (3, 2)
    w0 = layer.base_layer.weight.detach().clone()
    s = layer.scaling
    bs_as = layer.seq_B.weight @ layer.seq_A.weight
    expected = (torch.eye(w0.shape[0]) + s * bs_as) @ w0 + s * layer.lora_B.weight @ layer.lora_A.weight
    layer.merge()
    assert torch.allclose(layer.base_layer.weight, expected, atol=1e-6)
    layer.unmerge()
    assert (layer.base_layer.weight - w0).abs().max().item() <= 1e-5


def test_multihead_branch_ranks_from_flags():
    cfg = TrainConfig.from_flat(dict(model="m", data="d.json", output_dir="o", adapter="multihead", rank=8, rank_sequential=2))
    cfg.validate()
    assert (cfg.adapter.settings.rank_parallel, cfg.adapter.settings.rank_sequential, cfg.adapter.rank) == (6, 2, 8)
    assert cfg.adapter.settings.branch_ranks(8, cfg.adapter.rank) == (6, 2)
    assert cfg.adapter.settings.branch_ranks(4, cfg.adapter.rank) == (3, 1)  # a rank_pattern entry keeps the 3:1 split


def test_dmlora_forward_drops_whole_branches_and_rescales():
    torch.manual_seed(0)
    layer = DMLoRALinear(torch.nn.Linear(12, 10), rank=8, alpha=16, branches=4, branch_drop_max=0.5)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 12)
    layer.train()
    layer.set_progress(5, 10)
    assert layer.drop_prob == pytest.approx(0.25)
    torch.manual_seed(123)
    y = layer(x)
    torch.manual_seed(123)
    keep = torch.rand(4) >= 0.25  # the same draw the layer made
    expected = layer.base_layer(x)
    for k in range(4):
        if keep[k]:
            a, b = layer.lora_A.weight[2 * k:2 * k + 2], layer.lora_B.weight[:, 2 * k:2 * k + 2]
            expected = expected + layer.scalar * (x @ a.T @ b.T) / 0.75
    assert torch.allclose(y, expected, atol=1e-5)
    layer.eval()  # inference: every branch, no rescaling, equal to the merged weight
    with torch.no_grad():
        full = layer(x)
        layer.merge()
        assert torch.allclose(layer(x), full, atol=1e-5)


def test_dmlora_two_stage_scalar_and_determinism(tiny_ckpt, synth_data, tmp_path):
    scalars = []

    def record(trainer, step, _):
        layer = adapter_layers(trainer.model)["llm.model.layers.0.self_attn.q_proj"]
        scalars.append(float(layer.scalar.detach()))

    def run(name, seed):
        cfg = TrainConfig.from_flat(dict(model=str(tiny_ckpt), data=str(synth_data / "train.json"), image_folder=str(synth_data),
                          output_dir=str(tmp_path / name), adapter="dmlora", rank=8, alpha=16, max_steps=6,
                          batch_size=4, lr=1e-2, scalar_lr_ratio=0.5, save_every=0, seed=seed))
        cfg.validate()
        Trainer(cfg, progress=False, callbacks=[record]).run()
        return load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))

    a = run("a", 0)
    # stage 1 (steps 1-3): frozen at alpha/r; stage 2: it trains
    assert scalars[:3] == [2.0, 2.0, 2.0] and scalars[3] != 2.0 and scalars[5] != scalars[3]
    b, c = run("b", 0), run("c", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_adaring_shares_cores_and_matches_the_trace_formula(tiny_ckpt):
    model = _random_adapter(mobilepeft.load_vlm(tiny_ckpt), AdapterSpec.from_dict(dict(
        method="adaring", ring_rank=3, alpha=9, target_modules=["q_proj", "up_proj"])))
    layers = {p: m for p, m in adapter_layers(model).items() if isinstance(m, AdaRingLinear)}
    q = [m for p, m in layers.items() if p.endswith("q_proj")]
    assert len(q) == 4 and all(m.cores is q[0].cores for m in q)
    names = [n for n in dict(model.named_parameters()) if "g_in" in n or "g_out" in n]
    assert sorted(names) == sorted(f"adapter_shared.{g}.{c}" for g in ("q_proj", "up_proj") for c in ("g_in", "g_out"))
    layer = q[2]
    c, z = layer.cores, layer.ring_slice
    # ΔW[i, j] = s · Tr(G_out[:, i, :] · G_in[:, j, :] · Z), written out with no shortcuts
    delta = layer.scaling * torch.einsum("aib,bjc,ca->ij", c.g_out, c.g_in, z)
    assert torch.allclose(layer.delta_weight(), delta, atol=1e-6)
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        assert torch.allclose(layer.eval()(x), layer.base_layer(x) + x @ delta.T, atol=1e-5)
    assert layer.to_lora().rank == 9


def test_merge_carries_a_directory_tower_only_when_the_adapter_changed_it(tiny_ckpt, synth_data, tmp_path):
    """A checkpoint that reads its CLIP tower from a local directory: merging an LLM-only adapter
    leaves the tower there; merging one that adapts the tower writes the whole merged tower."""
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    prefix = "model.vision_tower.vision_tower."
    save_file({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
              str(ckpt / "clip_vision" / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith(prefix)}, str(ckpt / "model.safetensors"))
    batch = _image_batch(mobilepeft.load_vlm(ckpt), synth_data)
    for name, targets, tower_written in (("llm", ["q_proj"], False), ("vision", ["q_proj", "vision:q_proj"], True)):
        spec = AdapterSpec(method="lora", rank=4, alpha=8, target_modules=targets)
        model = _random_adapter(mobilepeft.load_vlm(ckpt), spec)
        save_adapter(model, spec, tmp_path / name, base_model=str(ckpt), projector_trained=False)
        merged_dir = merge_adapter(ckpt, tmp_path / name, tmp_path / f"merged-{name}")
        keys = load_file(str(merged_dir / "model.safetensors")).keys()
        assert any(k.startswith(prefix) for k in keys) is tower_written, name
        merged = mobilepeft.load_vlm(merged_dir)
        assert (_logits(merged, batch) - _logits(model.eval(), batch)).abs().max().item() <= 1e-4, name
