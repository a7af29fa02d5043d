"""ExecuTorch deployment (issue 6): the static-KV-cache decoder reproduces the model; a merged LoRA
model lowered to XNNPACK (fp32 and 8da4w) is driven by ExecuTorch's own MultimodalRunner; bench; the
native C++ runner (runner/, issue 8) built here against the wheel's runtime generates exactly
what the Python ExecuTorch path generates.

Lowering is the slow part, so each bundle is exported once per module. The other adapter methods
and the real-format V2 checkpoint go through the runner in test_executorch_methods.py (a separate
file so the two halves run on separate pytest-xdist workers)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    as_runner_pieces_see,
    assert_runner_generates_like_pytorch,
    build_native_runner,
    greedy_reference,
    piece_ids,
    train_adapter,
    val_questions,
)
from PIL import Image

import mobilepeft
from mobilepeft.adapters.inject import merge_and_unload
from mobilepeft.data.template import build_prompt_ids
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import file_record, read_bundle
from mobilepeft.export.executorch.exporter import PARITY_RTOL, export_executorch
from mobilepeft.export.executorch.runner import BundleRunner
from mobilepeft.export.graphs.kv_decoder import StaticCacheDecoder, TokenEmbedding, greedy_generate
from mobilepeft.models.image_processing import preprocess_images
from mobilepeft.models.tokenizer import Tokenizer

METHODS = ["lora", "multihead", "dmlora", "adaring"]


@pytest.fixture(scope="module")
def adapters(tiny_ckpt, synth_data, tmp_path_factory):
    """An adapter of every method with non-trivial deltas to merge; the LoRA one trained enough to
    answer (not just EOS), so runner-vs-PyTorch comparisons cover real tokens."""
    return {method: train_adapter(tiny_ckpt, synth_data, tmp_path_factory.mktemp(f"et-{method}"), method,
                                  40 if method == "lora" else 6)
            for method in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_static_cache_decoder_equals_the_model(method, tiny_ckpt, adapters, synth_data):
    model = mobilepeft.load_vlm(tiny_ckpt, adapter=adapters[method])
    merge_and_unload(model)
    reference = mobilepeft.load_vlm(tiny_ckpt, adapter=adapters[method])
    decoder, embed = StaticCacheDecoder(model, 128).eval(), TokenEmbedding(model)
    for question, image in val_questions(synth_data, 6):
        ids = build_prompt_ids(question, model.tokenizer)
        pixels = model.preprocess_images([Image.open(image)])
        with torch.no_grad():
            embeds = reference._splice(torch.tensor([ids]), None, None, pixels, left_pad=True).embeds
            decoder.reset()
            logits = decoder(embeds, torch.arange(embeds.shape[1]))
            expected = reference.llm(inputs_embeds=embeds).logits
        assert (logits - expected).abs().max() < 1e-4
        assert greedy_generate(decoder, embed, embeds, 8, model.tokenizer.eos_id) == greedy_reference(
            reference, question, image)


@pytest.fixture(scope="module")
def lora_bundles(tiny_ckpt, adapters, tmp_path_factory):
    """The tiny model with the merged LoRA on XNNPACK, in fp32 and 8da4w."""
    out = {}
    for quantize in ("none", "8da4w"):
        path = tmp_path_factory.mktemp(f"tiny-lora-{quantize}") / "bundle"
        export_executorch(tiny_ckpt, path, adapter_dir=adapters["lora"], quantize=quantize, max_seq_len=128,
                          echo=lambda _: None)
        out[quantize] = path
    return out


def test_multimodal_runner_generates_what_pytorch_generates(lora_bundles, tiny_ckpt, adapters, synth_data):
    answered = assert_runner_generates_like_pytorch(lora_bundles["none"], tiny_ckpt, adapters["lora"], synth_data)
    assert answered >= 4  # most questions get a non-empty answer, so the comparison has teeth


def test_8da4w_bundle_stays_close_to_fp32_and_shrinks(lora_bundles, tiny_ckpt, adapters, synth_data):
    bundle = read_bundle(lora_bundles["8da4w"], verify="full")
    section = bundle.section("executorch")
    assert section["quantization"] == "8da4w" and "int4" in section["quantization_detail"]["linear"]
    # The program reproduces the torchao-quantized modules it was lowered from (measured 1.4e-2 at
    # these 4 layers; the exporter's 0.15 allows for rounding differences compounding in deep models) ...
    assert section["parity_rel_diff"] < 5e-2 <= PARITY_RTOL["8da4w"]
    # ... and stays near the fp32 model (measured 0.18 on the demo model after 300 steps).
    assert section["quantization_detail"]["fp32_rel_diff"] < 0.5
    fp32_size = (lora_bundles["none"] / "model.pte").stat().st_size
    assert (lora_bundles["8da4w"] / "model.pte").stat().st_size < 0.4 * fp32_size
    model = mobilepeft.load_vlm(tiny_ckpt, adapter=adapters["lora"])
    runner = BundleRunner(bundle)
    questions = val_questions(synth_data, 16)
    same = sum(piece_ids(model.tokenizer, runner.generate(q, image, max_new_tokens=8).pieces)[:8]
               == greedy_reference(model, q, image)[:8] for q, image in questions)
    assert same >= 0.75 * len(questions), same


def test_bench_reports_the_design_keys_and_compares_with_eager(lora_bundles):
    import jsonschema

    from mobilepeft.export.bench import BENCH_SCHEMA, METRICS, BenchSettings, bench_bundle

    path = lora_bundles["none"]
    result = bench_bundle(path, BenchSettings(threads=1, prompt_len=8, gen_len=4, runs=2), compare_eager=True,
                          echo=lambda _: None)
    for key in (*METRICS, "peak_rss_mb", "threads", "backend", "quantization", "device"):
        assert key in result, key
    assert all(result[k] > 0 for k in METRICS) and result["peak_rss_mb"] > 0
    assert result["decode_tokens_per_s_min"] <= result["decode_tokens_per_s"] <= result["decode_tokens_per_s_max"]
    assert result["backend"] == "xnnpack" and result["threads"] == 1 and result["prompt_tokens"] == 16 + 8
    assert set(result["executorch_over_eager"]) >= {"prefill_tokens_per_s", "decode_tokens_per_s"}
    jsonschema.validate(result, BENCH_SCHEMA)  # the same keys the native runner and the apps write
    assert result["harness"] == "python" and result["runtime"] == "executorch"
    with pytest.raises(mobilepeft.UserError, match="max_seq_len"):
        bench_bundle(path, BenchSettings(prompt_len=100, gen_len=100), echo=lambda _: None)


@pytest.fixture(scope="module")
def native_runner(tmp_path_factory):
    """runner/ (the native runner) built with CMake against the executorch wheel's C++ runtime; the stamps
    of its bundle verification go to a temporary cache directory, not ~/.cache."""
    runner = build_native_runner(tmp_path_factory.mktemp("runner-build"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("runner-cache")))
        yield runner


def _native(runner, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.parametrize("quantize", ["none", "8da4w"])
def test_native_runner_generates_what_the_python_executorch_path_generates(quantize, lora_bundles, native_runner,
                                                                           synth_data, tmp_path):
    bundle = lora_bundles[quantize]
    runner = BundleRunner(bundle)
    tokenizer = Tokenizer(bundle)
    spec = read_bundle(bundle).manifest["prompt"]
    answered = 0
    for question, image in val_questions(synth_data, 8):
        ppm = tmp_path / f"{image.stem}.ppm"
        Image.open(image).convert("RGB").save(ppm)
        native = json.loads(_native(native_runner, "generate", "--bundle", bundle, "--prompt", question,
                                    "--image", ppm, "--max-new-tokens", 8).stdout)
        python = runner.generate(question, image, max_new_tokens=8)
        expected = piece_ids(tokenizer, python.pieces)
        if expected and expected[-1] == tokenizer.eos_id:  # MultimodalRunner hands over the EOS piece too
            expected.pop()
        assert as_runner_pieces_see(tokenizer, native["tokens"]) == expected, question
        assert native["text"] == python.text, question
        # The prompt: BOS + the template's text around the image, each piece tokenised on its own.
        placeholder = spec["image_placeholder"]
        text = spec["first_turn"].format(system=spec["system"],
                                         question=f"{placeholder}\n{question.replace(placeholder, '').strip()}")
        before, after = text.split(placeholder)
        assert native["prompt_tokens"] == [tokenizer.bos_id] + tokenizer.encode(before) + tokenizer.encode(after)
        answered += bool(expected)
    assert answered >= 4


def test_native_tokenizer_and_preprocessing_match_the_host(lora_bundles, native_runner, tmp_path):
    bundle = lora_bundles["none"]
    tokenizer = Tokenizer(bundle)
    strings = ["Which shape is shown?", "  two  spaces ", "x\n\ty 12345 !!", "日本語 ok 🙂", "", "ASSISTANT: a red circle</s>",
               "Ünïcödé façade — naïve", "tab\tand\r\nnewline", "<image>\nHow many?", "   ", "a  ASSISTANT:ASSISTANT: b"]
    (tmp_path / "strings.json").write_text(json.dumps(strings))
    ids = json.loads(_native(native_runner, "tokenize", "--bundle", bundle, "--text-file", tmp_path / "strings.json").stdout)
    assert ids == [tokenizer.encode(s) for s in strings]
    # LLaMA's own settings (whitespace kept as written, digits split, whitespace-only and
    # user-defined pieces) on a copy of the bundle with that tokenizer.model in place.
    import sentencepiece as spm

    from mobilepeft.data.synth import corpus_lines

    llama_like = Path(shutil.copytree(bundle, tmp_path / "llama-like"))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_prefix=str(tmp_path / "llama"), vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=["<image>", "ASSISTANT:"], hard_vocab_limit=False, num_threads=1, minloglevel=2)
    shutil.copyfile(tmp_path / "llama.model", llama_like / "tokenizer.model")
    manifest = json.loads((llama_like / "manifest.json").read_text())
    manifest["files"]["tokenizer.model"] = file_record(llama_like / "tokenizer.model")  # or the runner refuses it
    (llama_like / "manifest.json").write_text(json.dumps(manifest))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "llama.model"))
    ids = json.loads(_native(native_runner, "tokenize", "--bundle", llama_like, "--text-file",
                             tmp_path / "strings.json").stdout)
    assert ids == [sp.encode(s) for s in strings]
    # Letterboxing and PIL's bicubic resize, up and down, in the same fixed-point arithmetic: bit-equal pixels.
    rng = np.random.default_rng(0)
    for width, height in [(97, 41), (200, 150), (30, 64), (64, 64)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        image.save(tmp_path / "image.ppm")
        _native(native_runner, "preprocess", "--bundle", bundle, "--image", tmp_path / "image.ppm",
                "--output", tmp_path / "pixels.f32")
        pixels = np.fromfile(tmp_path / "pixels.f32", dtype=np.float32).reshape(1, 3, 64, 64)
        np.testing.assert_array_equal(pixels, preprocess_images([image], 64).numpy())


def test_native_bench_json_validates_and_bad_bundles_are_named(lora_bundles, native_runner, tmp_path):
    import jsonschema

    from mobilepeft.export.bench import BENCH_SCHEMA

    out = tmp_path / "result.json"
    done = _native(native_runner, "bench", "--bundle", lora_bundles["8da4w"], "--threads", 1, "--prompt-len", 8,
                   "--gen-len", 4, "--runs", 3, "--output", out)
    result = json.loads(done.stdout)
    assert json.loads(out.read_text()) == result
    jsonschema.validate(result, BENCH_SCHEMA)
    assert result["quantization"] == "8da4w" and result["harness"] == "native-runner" and result["threads"] == 1
    assert result["prompt_tokens"] == 16 + 8 and result["generated_tokens"] == 4 and result["runs"] == 3
    assert result["decode_tokens_per_s_min"] <= result["decode_tokens_per_s"] <= result["decode_tokens_per_s_max"]

    broken = Path(shutil.copytree(lora_bundles["none"], tmp_path / "broken"))
    with (broken / "model.pte").open("r+b") as fh:
        fh.truncate(1000)
    done = _native(native_runner, "bench", "--bundle", broken, check=False)
    assert done.returncode == 1 and "model.pte" in done.stderr and "bytes" in done.stderr
    done = _native(native_runner, "bench", "--bundle", lora_bundles["none"], "--prompt-len", 200, check=False)
    assert done.returncode == 1 and "max_seq_len" in done.stderr
    done = _native(native_runner, "generate", "--bundle", lora_bundles["none"], "--prompt", "many words " * 80,
                   check=False)
    assert done.returncode == 1 and "positions, the bundle's max_seq_len is 128" in done.stderr
    done = _native(native_runner, "bench", "--bundle", lora_bundles["none"], "--runs", "zero", check=False)
    assert done.returncode == 2 and "--runs" in done.stderr


def _with_manifest(bundle: Path, out: Path, edit) -> Path:
    copy = Path(shutil.copytree(bundle, out))
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_program_of_another_runtime_release_or_other_methods_is_refused(lora_bundles, native_runner, tmp_path):
    """docs/mobile.md, "One runtime version": the bundle records the ExecuTorch release that wrote it;
    the native runner and the Python runtime refuse another minor release, naming both versions, and the
    runner refuses a manifest that names a method the program lacks, naming it and the program's own."""
    from importlib.metadata import version

    bundle = lora_bundles["none"]
    installed = version("executorch")
    assert json.loads((bundle / "manifest.json").read_text())["executorch"]["runtime_version"] == installed

    older = _with_manifest(bundle, tmp_path / "older", lambda m: m["executorch"].update(runtime_version="1.1.0"))
    done = _native(native_runner, "generate", "--bundle", older, "--prompt", "hi", check=False)
    assert done.returncode == 1, done.stderr
    assert "ExecuTorch 1.1.0" in done.stderr and f"ExecuTorch {installed}" in done.stderr and "re-export" in done.stderr
    with pytest.raises(UserError, match=r"ExecuTorch 1\.1\.0.*ExecuTorch " + re.escape(installed)):
        BundleRunner(older)
    patch = installed.rsplit(".", 1)[0] + ".99"  # another patch of the same minor release loads
    same_minor = _with_manifest(bundle, tmp_path / "patch", lambda m: m["executorch"].update(runtime_version=patch))
    assert _native(native_runner, "generate", "--bundle", same_minor, "--prompt", "hi", "--max-new-tokens", 2).returncode == 0

    def add_method(m):
        m["executorch"]["methods"]["audio_encoder"] = m["executorch"]["methods"]["vision_encoder"]
    extra = _with_manifest(bundle, tmp_path / "methods", add_method)
    done = _native(native_runner, "generate", "--bundle", extra, "--prompt", "hi", check=False)
    assert done.returncode == 1 and "'audio_encoder'" in done.stderr and "text_decoder" in done.stderr, done.stderr


def test_native_sha256_agrees_with_hashlib(native_runner, tmp_path):
    """FIPS 180-4 padding edges (55/56 bytes: the length still fits the block or not; 63-65, 119/120)
    and the runner's 1 MiB read blocks."""
    rng = np.random.default_rng(0)
    files = []
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 1_000_000, (1 << 20) + 1):
        files.append(tmp_path / f"{size}.bin")
        files[-1].write_bytes(rng.bytes(size))
    printed = _native(native_runner, "sha256", *files).stdout.splitlines()
    assert printed == [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f}" for f in files]


def _overwrite_middle(path: Path, size: int = 4096) -> None:
    """Flips ``size`` bytes in the middle of ``path`` in place: same length, different content."""
    with path.open("r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        old = fh.read(size)
        fh.seek(-len(old), os.SEEK_CUR)
        fh.write(bytes(b ^ 0xFF for b in old))


def test_native_runner_refuses_a_file_overwritten_in_place(lora_bundles, native_runner, tmp_path):
    bundle = Path(shutil.copytree(lora_bundles["none"], tmp_path / "tampered"))
    pte = bundle / "model.pte"
    size = pte.stat().st_size
    _overwrite_middle(pte)
    assert pte.stat().st_size == size  # the size check alone passes it
    done = _native(native_runner, "generate", "--bundle", bundle, "--prompt", "Which shape is shown?",
                   "--max-new-tokens", 2, check=False)
    assert done.returncode == 1 and done.stdout == ""
    expected = json.loads((bundle / "manifest.json").read_text())["files"]["model.pte"]["sha256"]
    assert f"model.pte: SHA-256 is {file_record(pte)['sha256']}, manifest.json records {expected}" in done.stderr
    assert "copy the bundle again, or re-export it" in done.stderr
    # --verify size checks sizes only (documented as unsafe): the tampered model runs (its answer,
    # garbage, need not even be UTF-8, hence bytes here).
    done = subprocess.run([str(native_runner), "generate", "--bundle", str(bundle), "--prompt", "Which shape is shown?",
                           "--max-new-tokens", "2", "--verify", "size"], capture_output=True, timeout=120)
    assert b"SHA-256" not in done.stderr


def test_native_runner_stamp_skips_unchanged_files_and_still_catches_tampering(lora_bundles, native_runner, tmp_path):
    bundle = Path(shutil.copytree(lora_bundles["8da4w"], tmp_path / "bundle"))
    listed = json.loads((bundle / "manifest.json").read_text())["files"]
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "MOBILEPEFT_RUNNER_LOG": "info"}
    generate = ("generate", "--bundle", bundle, "--prompt", "Which shape is shown?", "--max-new-tokens", 2)
    time.sleep(2.1)  # files changed in the last 2 s are hashed every time (their timestamps could repeat)

    first = _native(native_runner, *generate, env=env)
    assert f"{len(listed)} files hashed" in first.stderr and "0 unchanged since the stamp" in first.stderr
    stamp = tmp_path / "cache" / "mobilepeft" / "verified" / f"{hashlib.sha256(str(bundle.resolve()).encode()).hexdigest()}.json"
    recorded = json.loads(stamp.read_text())
    assert recorded["bundle"] == str(bundle.resolve()) and sorted(recorded["files"]) == sorted(listed)
    for name, entry in recorded["files"].items():
        st = (bundle / name).stat()
        assert entry == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                         "inode": st.st_ino, "device": st.st_dev, "sha256": listed[name]["sha256"]}, name

    second = _native(native_runner, *generate, env=env)
    assert f"0 files hashed (0.0 MB), {len(listed)} unchanged since the stamp" in second.stderr
    assert json.loads(second.stdout)["tokens"] == json.loads(first.stdout)["tokens"]
    full = _native(native_runner, *generate, "--verify", "full", env=env)
    assert f"{len(listed)} files hashed" in full.stderr

    _overwrite_middle(bundle / "model.pte")
    done = _native(native_runner, *generate, env=env, check=False)
    assert done.returncode == 1 and done.stdout == "" and "model.pte: SHA-256 is" in done.stderr
