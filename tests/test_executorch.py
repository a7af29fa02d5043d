"""ExecuTorch deployment (first slice of issue 6): the static-KV-cache decoder reproduces the model,
and a merged model lowered to a .pte is driven by ExecuTorch's own MultimodalRunner to the same
greedy answers as ``model.generate``."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import mobilepeft
from mobilepeft.adapters.inject import merge_and_unload
from mobilepeft.data.template import build_prompt_ids
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.et_runner import BundleRunner
from mobilepeft.export.executorch_export import export_executorch
from mobilepeft.export.kv_decoder import StaticCacheDecoder, TokenEmbedding, greedy_generate
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer

METHODS = ["lora", "multihead", "dmlora", "adaring"]


@pytest.fixture(scope="module")
def adapters(tiny_ckpt, synth_data, tmp_path_factory):
    """An adapter of every method with non-trivial deltas to merge; the LoRA one trained enough to
    answer (not just EOS), so runner-vs-PyTorch comparisons cover real tokens."""
    out = {}
    for method in METHODS:
        run = tmp_path_factory.mktemp(f"et-{method}")
        cfg = TrainConfig(model=str(tiny_ckpt), data=str(synth_data / "train.json"), image_folder=str(synth_data),
                          output_dir=str(run), adapter=method, rank=4, alpha=8,
                          max_steps=40 if method == "lora" else 6, batch_size=8, lr=3e-3,
                          max_length=256, save_every=0, schedule="fixed")
        cfg.validate()
        Trainer(cfg, progress=False).run()
        out[method] = run / "adapter"
    return out


def _questions(data, n):
    records = json.loads((data / "val.json").read_text())[:n]
    return [(r["conversations"][0]["value"], data / r["image"]) for r in records]


def _reference(model, question, image, max_new_tokens=8):
    pixels = model.preprocess_images([Image.open(image)])
    return model.generate(build_prompt_ids(question, model.tokenizer), pixels, max_new_tokens=max_new_tokens)[0]


def _piece_ids(tokenizer, pieces):
    """Token ids of the runner's decoded pieces (one SentencePiece piece each; byte pieces verbatim)."""
    sp = tokenizer._sp
    return [sp.PieceToId(p if p.startswith("<0x") else p.replace(" ", "\u2581")) for p in pieces]


@pytest.mark.parametrize("method", METHODS)
def test_static_cache_decoder_equals_the_model(method, tiny_ckpt, adapters, synth_data):
    model = mobilepeft.load_vlm(tiny_ckpt, adapter=adapters[method])
    merge_and_unload(model)
    reference = mobilepeft.load_vlm(tiny_ckpt, adapter=adapters[method])
    decoder, embed = StaticCacheDecoder(model, 128).eval(), TokenEmbedding(model)
    for question, image in _questions(synth_data, 6):
        ids = build_prompt_ids(question, model.tokenizer)
        pixels = model.preprocess_images([Image.open(image)])
        with torch.no_grad():
            embeds = reference._splice(torch.tensor([ids]), None, None, pixels, left_pad=True).embeds
            decoder.reset()
            logits = decoder(embeds, torch.arange(embeds.shape[1]))
            expected = reference.llm(inputs_embeds=embeds).logits
        assert (logits - expected).abs().max() < 1e-4
        assert greedy_generate(decoder, embed, embeds, 8, model.tokenizer.eos_id) == _reference(reference, question, image)


@pytest.fixture(scope="module")
def et_bundles(tiny_ckpt, v2_sharded_ckpt, adapters, tmp_path_factory):
    """The tiny model with a merged LoRA on XNNPACK, and the real-format V2 sharded checkpoint on
    the portable backend (lowering is the slow part: each is exported once)."""
    out = {}
    for name, ckpt, adapter, backend in (("tiny-lora-xnnpack", tiny_ckpt, adapters["lora"], "xnnpack"),
                                         ("v2-sharded-portable", v2_sharded_ckpt, None, "portable")):
        path = tmp_path_factory.mktemp(name) / "bundle"
        export_executorch(ckpt, path, adapter_dir=adapter, backend=backend, max_seq_len=128, echo=lambda _: None)
        out[name] = (path, ckpt, adapter)
    return out


@pytest.mark.parametrize("case", ["tiny-lora-xnnpack", "v2-sharded-portable"])
def test_multimodal_runner_generates_what_pytorch_generates(case, et_bundles, synth_data):
    path, ckpt, adapter = et_bundles[case]
    bundle = read_bundle(path, verify_hashes=True)
    assert bundle.manifest["executorch"]["parity_rel_diff"] < 1e-3
    model = mobilepeft.load_vlm(ckpt, adapter=adapter)
    runner = BundleRunner(bundle)
    answered = 0
    for question, image in _questions(synth_data, 8):
        expected = _reference(model, question, image)
        got = runner.generate(question, image, max_new_tokens=8)
        assert _piece_ids(model.tokenizer, got.pieces)[: len(expected)] == expected, question
        assert len(got.pieces) <= len(expected) + 1  # at most the EOS piece beyond
        answered += bool(expected)
    assert answered >= 4  # most questions get a non-empty answer, so the comparison has teeth


def test_bench_reports_the_design_keys_and_compares_with_eager(et_bundles):
    from mobilepeft.export.bench import METRICS, BenchSettings, bench_bundle

    path, _, _ = et_bundles["tiny-lora-xnnpack"]
    result = bench_bundle(path, BenchSettings(threads=1, prompt_len=8, gen_len=4, runs=2), compare_eager=True,
                          echo=lambda _: None)
    for key in (*METRICS, "peak_rss_mb", "threads", "backend", "quantization", "device"):
        assert key in result, key
    assert all(result[k] > 0 for k in METRICS) and result["peak_rss_mb"] > 0
    assert result["decode_tokens_per_s_min"] <= result["decode_tokens_per_s"] <= result["decode_tokens_per_s_max"]
    assert result["backend"] == "xnnpack" and result["threads"] == 1 and result["prompt_tokens"] == 16 + 8
    assert set(result["executorch_over_eager"]) >= {"prefill_tokens_per_s", "decode_tokens_per_s"}
    with pytest.raises(mobilepeft.UserError, match="max_seq_len"):
        bench_bundle(path, BenchSettings(prompt_len=100, gen_len=100), echo=lambda _: None)
