"""Core ML, checked on Linux without Apple hardware (docs/deploy-coreml.md).

Core ML predicts only on macOS/iOS, so correctness is shown by construction and by reading the
saved packages back: the exported graphs handed to coremltools reproduce the model step by step
through the KV cache; each package declares exactly the manifest's interface (names, dtypes,
shapes, states); its weights are the model's (bit-exact in fp16, within the quantization step
when compressed) and stored in the format asked for; ExecuTorch's Core ML delegate takes the
whole program.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilepeft
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.coreml.exporter import (
    PARITY_RTOL,
    CoreMLTextDecoder,
    compress_weights,
    decoder_parity,
    export_coreml,
)
from mobilepeft.export.coreml.inspect import (
    load_package,
    op_counts,
    package_bytes,
    package_io,
    specification_version,
    stored_weights,
)
from mobilepeft.export.graphs.source_model import probe_inputs
from mobilepeft.export.graphs.vision import VisionEncoder

SEQ = 96


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _model_weights(ckpt, max_seq_len: int) -> dict[str, torch.Tensor]:
    """The converted modules' parameters under the names coremltools gives their constants."""
    model = mobilepeft.load_vlm(ckpt).eval()
    modules = {"": CoreMLTextDecoder(model, max_seq_len, stateful=True), "v": VisionEncoder(model, include_projector=True)}
    return {name.replace(".", "_"): p.detach() for m in modules.values() for name, p in m.named_parameters(remove_duplicate=False)}


@pytest.fixture(scope="module")
def tiny_bundle(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("coreml-tiny") / "bundle"
    export_coreml(tiny_ckpt, path, max_seq_len=SEQ, echo=lambda _: None)
    return path


def test_stateful_packages_declare_the_manifest_interface(tiny_bundle, tiny_ckpt):
    section = read_bundle(tiny_bundle, verify="full").section("coreml")
    cfg = mobilepeft.load_vlm(tiny_ckpt).config.llama_config()
    layers, kv, head = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    assert section["target"] == "iOS18" and section["stateful_kv_cache"] and section["compression"] == "none"
    assert section["parity_rel_diff"] <= PARITY_RTOL
    for name in ("vision_encoder", "text_decoder"):
        package = tiny_bundle / section[name]["file"]
        found = package_io(package)
        for kind in ("inputs", "outputs", "states"):
            declared = section[name][kind]
            assert [(t["name"], t["dtype"]) for t in found[kind]] == [(t["name"], t["dtype"]) for t in declared]
            assert all(f["shape"] in (None, d["shape"]) for f, d in zip(found[kind], declared, strict=True))
        assert specification_version(package) == 9  # iOS 18: states and blockwise formats
    decoder = package_io(tiny_bundle / "TextDecoder.mlpackage")
    assert [(t["name"], t["dtype"], t["shape"]) for t in decoder["inputs"]] == [
        ("input_ids", "int32", [1, "T"]), ("image_embeds", "float16", [1, 16, 128]), ("cache_position", "int32", ["T"])]
    assert len(decoder["states"]) == 2 * layers
    assert all(s["dtype"] == "float16" and s["shape"] == [1, kv, SEQ, head] for s in decoder["states"])
    ops = op_counts(tiny_bundle / "TextDecoder.mlpackage")
    # q, k, v, o, gate, up, down per layer + lm_head; one gather (the token embedding, inside the decoder);
    # one read and one in-place write per cache; Core ML's fused attention per layer.
    assert ops["linear"] == 7 * layers + 1 and ops["gather"] >= 1
    assert ops["read_state"] == ops["coreml_update_state"] == 2 * layers
    assert ops["slice_update"] == 2 * layers and ops["scaled_dot_product_attention"] == layers


def test_package_weights_are_the_models_in_fp16(tiny_bundle, tiny_ckpt):
    expected = _model_weights(tiny_ckpt, SEQ)
    linears = {n for n in expected if n.startswith("decoder_decoder_layers") and n.endswith("proj_weight")}
    seen = set()
    for package in ("VisionEncoder.mlpackage", "TextDecoder.mlpackage"):
        for weight in stored_weights(tiny_bundle / package):
            assert weight.storage == "const" and weight.stored_dtype == "float16"
            want = expected[weight.name].half().float().numpy()
            np.testing.assert_array_equal(weight.value.reshape(want.shape), want, err_msg=weight.name)
            seen.add(weight.name)
    assert linears <= seen and "decoder_lm_head_weight" in seen and "decoder_decoder_embed_tokens_weight" in seen


@pytest.mark.parametrize(("compress", "storage", "dtype", "axis", "rtol"), [
    ("int4", "constexpr_blockwise_shift_scale", "int4", 1, 0.15),  # blocks of 32 input channels (measured 0.10)
    ("palettize4", "constexpr_lut_to_dense", "uint4", 0, 0.15),  # palettes per 16 output channels (0.10)
])
def test_ios18_compression_is_stored_as_asked_and_shrinks(tiny_bundle, tiny_ckpt, tmp_path, compress, storage,
                                                          dtype, axis, rtol):
    """The exporter's compress step on the fp16 packages (converting again would only repeat the fixture)."""
    expected = _model_weights(tiny_ckpt, SEQ)
    fp16 = compressed = 0
    for package in ("VisionEncoder.mlpackage", "TextDecoder.mlpackage"):
        out = tmp_path / package
        compress_weights(load_package(tiny_bundle / package), compress).save(str(out))
        # Every weight of 2048+ elements whose grouped axis divides into the format's groups is
        # compressed (the patch embedding's 3 colour channels do not, and stay fp16).
        big = [w for w in stored_weights(out) if w.value.size >= 2048 and w.value.shape[axis] % 16 == 0]
        assert len(big) >= 14 and all(w.storage == storage and w.stored_dtype == dtype for w in big), package
        for w in big:  # relative RMS rounding error of a 4-bit format: ~0.1; a misplaced weight: ~1.4
            want = expected[w.name].numpy().reshape(w.value.shape)
            assert _rms(w.value - want) <= rtol * _rms(want), (w.name, _rms(w.value - want) / _rms(want))
        fp16, compressed = fp16 + package_bytes(tiny_bundle / package), compressed + package_bytes(out)
        if package == "TextDecoder.mlpackage":
            assert package_bytes(out) <= 0.35 * package_bytes(tiny_bundle / package)
    assert compressed <= 0.35 * fp16, (compressed, fp16)


def test_step_by_step_parity_has_teeth(v2_sharded_ckpt):
    """The exporter's check (prefill + decode steps through the cache, asserted via the manifests
    in the other tests) on the converted module, here in eager mode: the cache path agrees with the
    model; a decoder whose cache is lost between calls, as a broken state would be, does not."""
    model = mobilepeft.load_vlm(v2_sharded_ckpt).eval()
    vision, probe = VisionEncoder(model, include_projector=True).eval(), probe_inputs(model)
    decoder = CoreMLTextDecoder(model, SEQ, stateful=True).eval()
    assert decoder_parity(model, vision, decoder, probe, cache_shape=None, steps=8) <= PARITY_RTOL

    def forgetful(*args):
        decoder.decoder.reset()
        return decoder(*args)

    assert decoder_parity(model, vision, forgetful, probe, cache_shape=None, steps=2) > 100 * PARITY_RTOL


def test_v2_checkpoint_through_the_cli_stateless_int8(v2_sharded_ckpt, tmp_path):
    from typer.testing import CliRunner

    from mobilepeft.export.cli import app

    bundle = tmp_path / "bundle"
    done = CliRunner().invoke(app, ["export", "coreml", "--model", str(v2_sharded_ckpt), "--output-dir", str(bundle),
                                    "--target", "iOS17", "--compress", "int8", "--max-seq-len", str(SEQ)])
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "TextDecoder.mlpackage" in done.stdout and "Running MIL" not in done.output
    section = read_bundle(bundle, verify="full").section("coreml")
    assert section["parity_rel_diff"] <= PARITY_RTOL  # stateless: caches fed back through 4 decode steps
    cfg = mobilepeft.load_vlm(v2_sharded_ckpt).config.llama_config()
    cache = [cfg.num_hidden_layers, 1, cfg.num_key_value_heads, SEQ, cfg.hidden_size // cfg.num_attention_heads]
    decoder = package_io(bundle / "TextDecoder.mlpackage")
    assert specification_version(bundle / "TextDecoder.mlpackage") == 8 and not decoder["states"]
    assert [(t["name"], t["shape"]) for t in decoder["inputs"][3:]] == [("k_cache", cache), ("v_cache", cache)]
    assert [(t["name"], t["shape"]) for t in decoder["outputs"][1:]] == [("k_cache_out", cache), ("v_cache_out", cache)]
    assert section["text_decoder"]["inputs"][3:] == decoder["inputs"][3:]
    expected = _model_weights(v2_sharded_ckpt, SEQ)
    for weight in stored_weights(bundle / "TextDecoder.mlpackage"):
        assert weight.storage == "constexpr_affine_dequantize" and weight.stored_dtype == "int8"
        want = expected[weight.name].numpy().reshape(weight.value.shape)
        # Within half a quantization step (1/127 of the largest weight of its channel, at most of the
        # tensor) plus fp16 rounding of the scale; a misplaced weight is off by the weight itself.
        step = np.abs(want).max() / 127
        assert np.abs(weight.value - want).max() <= 0.5 * step + 1e-3 * np.abs(want).max(), weight.name
    assert section["package_bytes"]["text_decoder"] == package_bytes(bundle / "TextDecoder.mlpackage")

    # Checked before any work (the CLI turns a UserError into a one-line message and exit status 2).
    with pytest.raises(UserError, match="iOS 18") as bad:
        export_coreml(v2_sharded_ckpt, tmp_path / "x", target="iOS17", compress="int4", echo=lambda _: None)
    assert bad.value.field == "compress" and not (tmp_path / "x").exists()


def test_executorch_core_ml_delegate_takes_the_whole_program(tiny_ckpt, tmp_path):
    from executorch.exir._serialize._program import deserialize_pte_binary

    from mobilepeft.export.executorch.exporter import export_executorch

    export_executorch(tiny_ckpt, tmp_path / "bundle", backend="coreml", max_seq_len=SEQ, echo=lambda _: None)
    section = read_bundle(tmp_path / "bundle", verify="full").section("executorch")
    assert section["backend"] == "coreml" and section["dtype"] == "float16"
    assert section["parity_checked_on"] == "exported_program" and section["parity_rel_diff"] <= 1e-4
    for method, counts in section["delegation"].items():
        assert counts["delegated_subgraphs"] == 1 and counts["non_delegated_nodes"] == 0, (method, counts)
    assert section["delegation"]["text_decoder"]["delegated_nodes"] > 100
    program = deserialize_pte_binary((tmp_path / "bundle" / "model.pte").read_bytes())
    plans = {plan.name: [d.id for d in plan.delegates] for plan in getattr(program, "program", program).execution_plan}
    assert all(plans[m] == ["CoreMLBackend"] for m in ("vision_encoder", "token_embedding", "text_decoder"))
    assert plans["get_max_seq_len"] == []  # metadata methods stay plain constants for the runner


def test_bench_coreml_says_it_needs_macos(tiny_bundle):
    from mobilepeft.export.bench import BenchSettings, bench_bundle

    with pytest.raises(UserError, match="needs macOS") as error:
        bench_bundle(tiny_bundle, BenchSettings(prompt_len=4, gen_len=2, runs=1), coreml=True, echo=lambda _: None)
    assert error.value.field == "coreml"

