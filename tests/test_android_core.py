"""The Android app's pure-Kotlin core (android_demo/app/core) against the real Python code.

Fixtures come from the project itself: the tiny model's SentencePiece tokenizer (plus variants with
other normaliser flags, user-defined and unused pieces), real ONNX Runtime training and ExecuTorch
bundles, ``encode_sample`` rows, ``preprocess_images`` tensors and PIL bicubic resizes, the
personalize batch order, an ORT-exported inference model and hashlib digests. The Kotlin tests (compiled here with
kotlinc, no Gradle) check their numbers against these; this file then validates what they wrote:
the benchmark JSON against mobilepeft/export/bench.schema.json and the adapter against ``adapter from-ort``.
It also checks the sources' conventions: every manifest read's key path exists in
mobilepeft/export/bundle.schema.json, every benchmark key in mobilepeft/export/bench.schema.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "android_demo" / "app"
CORE_MAIN = APP / "core" / "src" / "main" / "kotlin"
CORE_TEST = APP / "core" / "src" / "test" / "kotlin"
APP_SRC = APP / "app" / "src" / "main"
BENCH_SCHEMA = ROOT / "mobilepeft" / "export" / "bench.schema.json"
MIN_KOTLIN_TESTS = 20


TOKENIZER_TEXTS = [
    "Hello world", "hello", " hello", "  hello", "hello ", "hello  ", "a  b   c", " ", "   ", "\n", "a\nb",
    "line one\nline two\n", "\tTabbed\ttext", "What is this?", "What colour is the shape?", "A red circle.",
    "ASSISTANT:", "USER: <image>\nWhat is it? ASSISTANT:", "1234567890", "3.14159", "x=42; y=-7", "(a+b)*c/d",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?`~", "don't", "It's 5 o'clock.", "e-mail: user@example.com",
    "caf\u00e9", "na\u00efve", "\u00e7a va", "\u5199\u771f", "\u3053\u3093\u306b\u3061\u306f", "\U0001f642",
    "emoji \U0001f680 rocket", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "mixed \u00fcber \u00df \u20ac 100",
    "\u0645\u0631\u062d\u0628\u0627", "\u2581already escaped", "trailing space ", " leading", "A", "the the the",
    "assistant assistant", "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "A chat between a curious user and an artificial intelligence assistant.", "UPPER lower MiXeD",
    "<s> and </s> as text", "<unk>", "<0x41>", "\u00a0nbsp", "zero\u200bwidth", "\r\n windows",
    "SSS", "xSSSSS", "SS SSS", "assess the assistant",
]


def _kotlin_files(*roots: Path) -> list[Path]:
    return sorted(p for r in roots for p in r.rglob("*.kt"))


@pytest.fixture(scope="module")
def kotlin_tools() -> tuple[str, str]:
    kotlinc, java = shutil.which("kotlinc"), shutil.which("java")
    if kotlinc is None or java is None:
        pytest.skip("kotlinc not found: the Android core tests compile with plain kotlinc (Debian: apt-get install kotlin)")
    return kotlinc, java


@pytest.fixture(scope="module")
def core_jar(kotlin_tools, request) -> Path:
    """core main + test sources compiled with kotlinc, cached by a hash of the sources and the compiler."""
    kotlinc, _ = kotlin_tools
    files = _kotlin_files(CORE_MAIN, CORE_TEST)
    digest = hashlib.sha256(kotlinc.encode())
    for f in files:
        digest.update(str(f.relative_to(APP)).encode())
        digest.update(f.read_bytes())
    # pytest's cache (kotlinc takes ~25 s); a temporary folder when the cache plugin is off.
    cache_plugin = getattr(request.config, "cache", None)
    cache = Path(cache_plugin.mkdir("android-core") if cache_plugin else request.getfixturevalue("tmp_path_factory").mktemp("android-core"))
    jar = cache / f"core-tests-{digest.hexdigest()[:16]}.jar"
    if not jar.is_file():
        tmp = cache / f".core-tests-{os.getpid()}.jar"
        proc = subprocess.run([kotlinc, *map(str, files), "-include-runtime", "-d", str(tmp)],
                              capture_output=True, text=True, timeout=900)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
        assert proc.returncode == 0 and tmp.is_file(), "kotlinc failed:\n" + "\n".join(errors or [proc.stderr[-4000:]])
        os.replace(tmp, jar)
        for old in cache.glob("core-tests-*.jar"):
            if old != jar:
                old.unlink(missing_ok=True)
    return jar


def _tokenizer_variants(src: Path, out: Path) -> dict[str, bytes]:
    from sentencepiece import sentencepiece_model_pb2 as pb

    base = pb.ModelProto()
    base.ParseFromString(src.read_bytes())
    assert base.normalizer_spec.name == "identity", "the tiny preset's tokenizer should use the identity normaliser"

    def variant(edit) -> bytes:
        m = pb.ModelProto()
        m.CopyFrom(base)
        edit(m)
        return m.SerializeToString()

    def remove_extra(m):
        m.normalizer_spec.remove_extra_whitespaces = True

    def no_dummy(m):
        m.normalizer_spec.add_dummy_prefix = False

    def user_and_unused(m):
        for piece in ("<image>", "ASSISTANT:"):
            p = m.pieces.add()
            p.piece, p.score, p.type = piece, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
        for p in m.pieces:
            if p.piece in ("\u2581the", "ant"):
                p.type = pb.ModelProto.SentencePiece.UNUSED

    def ties(m):  # equal scores everywhere: the leftmost pair must win
        for p in m.pieces:
            if p.type == pb.ModelProto.SentencePiece.NORMAL:
                p.score = -1.0

    def nfkc(m):
        m.normalizer_spec.name = "nmt_nfkc"

    def unigram(m):
        m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM

    models = {"tokenizer.model": base.SerializeToString(), "tokenizer_rmws.model": variant(remove_extra),
              "tokenizer_nodummy.model": variant(no_dummy), "tokenizer_user.model": variant(user_and_unused),
              "tokenizer_ties.model": variant(ties),
              "tokenizer_nfkc.model": variant(nfkc), "tokenizer_unigram.model": variant(unigram)}
    out.mkdir()
    for name, data in models.items():
        (out / name).write_bytes(data)
    return models


def _tokenizer_cases(models: dict[str, bytes]) -> dict:
    import sentencepiece as spm

    encode = {}
    for name in ("tokenizer.model", "tokenizer_rmws.model", "tokenizer_nodummy.model", "tokenizer_user.model",
                 "tokenizer_ties.model"):
        sp = spm.SentencePieceProcessor(model_proto=models[name])
        encode[name] = [{"text": t, "ids": sp.EncodeAsIds(t), "decoded": sp.DecodeIds(sp.EncodeAsIds(t))}
                        for t in TOKENIZER_TEXTS]
    sp = spm.SentencePieceProcessor(model_proto=models["tokenizer.model"])
    pid = sp.PieceToId
    id_lists = [
        [1, *sp.EncodeAsIds("Hello world"), 2], [pid("\u2581"), pid("\u2581"), *sp.EncodeAsIds("hi")],
        [pid("<0xC3>")], [pid("<0xE2>"), pid("<0x82>")], [pid("<0xE2>"), pid("<0x82>"), pid("<0xAC>")],
        [pid("<0xFF>"), pid("<0x41>")], [0, *sp.EncodeAsIds("x")], [1, 2], [], [pid("\u2581the"), pid("\u2581the")],
        [1, pid("\u2581"), pid("<0x0A>"), pid("\u2581the")], [*sp.EncodeAsIds("a"), 1, *sp.EncodeAsIds(" b")],
        [pid("<0x20>"), pid("\u2581the")], [pid("<0xF0>"), pid("<0x9F>"), pid("<0x99>"), pid("<0x82>"), pid("\u2581ok")],
    ]
    decode = [{"ids": ids, "text": sp.DecodeIds(ids)} for ids in id_lists]
    return {"encode": encode, "decode": decode}


def _conversation_cases(bundle: Path) -> dict:
    from mobilepeft.data.llava import Conversation
    from mobilepeft.data.template import build_prompt_ids
    from mobilepeft.errors import UserError
    from mobilepeft.export.ort.batch import encode_sample
    from mobilepeft.models.tokenizer import Tokenizer

    manifest = json.loads((bundle / "manifest.json").read_text())
    tok = Tokenizer(bundle)
    n_image = manifest["model"]["num_image_tokens"]
    seq = manifest["onnx_training"]["inputs"][0]["shape"][1]
    long_answer = " ".join(["the assistant answers"] * 40)
    cases = [
        ([("<image>\nWhat is this?", "A red circle.")], seq),
        ([("What is this? <image>", "blue")], seq),
        ([("<image>\nQ one", "answer one"), ("Q two  with  spaces", "answer two"), ("Q3", "A3")], seq),
        ([("<image>\nFirst?", "short"), ("Second?", long_answer)], seq),
        ([("<image>\nDescribe it.", long_answer)], seq),
        ([("Hello there", "Hi!")], seq),
        ([("<image>\nWhat's in the \u5199\u771f? \U0001f642", "\u00e7a va \u2014 na\u00efve")], seq),
        ([("<image>\nTiny window", "answer that gets cut")], None),
        ([("<image>\n" + " ".join(["a long question"] * 60), "x")], seq),
    ]
    rows = []
    cut_at = len(build_prompt_ids("<image>\nTiny window", tok)) + n_image - 1 + 3  # room for 3 answer tokens
    for turns, seq_len in cases:
        seq_len = seq_len or cut_at
        conv = Conversation(id="s", index=0, image=Path("x.png") if "<image>" in turns[0][0] else None,
                            turns=list(turns))
        try:
            row = encode_sample(conv, tok, num_image_tokens=n_image, seq_len=seq_len, pad_id=tok.pad_id)
        except UserError:
            rows.append({"turns": turns, "seq_len": seq_len, "error": True})
            continue
        rows.append({"turns": turns, "seq_len": seq_len, "input_ids": row.input_ids.tolist(),
                     "attention_mask": row.attention_mask.tolist(), "labels": row.labels.tolist()})
    assert sum("error" in r for r in rows) == 1
    questions = ["What is this?", "<image>\nWhat is this?", "Describe <image> please", "  spaced  out  ", ""]
    prompts = [{"question": q, "ids": build_prompt_ids(q, tok)} for q in questions]
    return {"rows": rows, "prompts": prompts}


def _sha256_cases(out: Path) -> list[dict]:
    """Files at SHA-256's padding edges (55/56 bytes: the length fits the last block or not) and
    across the 1 MiB read blocks, with hashlib's digests."""
    rng = np.random.default_rng(0)
    out.mkdir()
    cases = []
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 1_000_000, (1 << 20) + 1):
        data = rng.bytes(size)
        (out / f"{size}.bin").write_bytes(data)
        cases.append({"file": f"{out.name}/{size}.bin", "sha256": hashlib.sha256(data).hexdigest()})
    return cases


def _image_cases(out: Path, size: int) -> dict:
    from mobilepeft.models.image_processing import preprocess_images

    rng = np.random.default_rng(0)
    out.mkdir()
    preprocess = []
    for w, h in [(40, size), (size, 40), (size, size), (size - 1, size), (size, size - 3), (30, 50), (120, 90)]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"images/pre_{w}x{h}"
        (out.parent / f"{name}.rgb").write_bytes(pixels.tobytes())
        expected = preprocess_images([Image.fromarray(pixels)], size).numpy().astype("<f4")
        (out.parent / f"{name}.f32").write_bytes(expected.tobytes())
        preprocess.append({"rgb": f"{name}.rgb", "width": w, "height": h, "expected": f"{name}.f32"})
    resize = []
    for (w, h), (ow, oh) in [((37, 23), (64, 50)), ((200, 150), (61, 45)), ((50, 50), (64, 64)), ((64, 100), (64, 100))]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"images/resize_{w}x{h}_{ow}x{oh}"
        (out.parent / f"{name}.rgb").write_bytes(pixels.tobytes())
        resized = np.asarray(Image.fromarray(pixels).resize((ow, oh), resample=Image.Resampling.BICUBIC))
        (out.parent / f"{name}.out.rgb").write_bytes(resized.tobytes())
        resize.append({"rgb": f"{name}.rgb", "width": w, "height": h, "out_width": ow, "out_height": oh,
                       "expected": f"{name}.out.rgb", "tolerance": 0})
    return {"preprocess": preprocess, "resize": resize}


@pytest.fixture(scope="module")
def fixture_dir(kotlin_tools, tiny_ckpt, tmp_path_factory) -> Path:
    return build_fixtures(tiny_ckpt, tmp_path_factory.mktemp("android-core"))


def build_fixtures(tiny_ckpt: Path, root: Path) -> Path:
    """Everything the Kotlin tests compare against, written under ``root/fixtures``."""
    from helpers import build_native_runner, foreign_adapter_files, train_adapter

    from mobilepeft.data.synth import write_synthetic_dataset
    from mobilepeft.export.bundle import read_bundle
    from mobilepeft.export.ort.exporter import export_onnx_training
    from mobilepeft.export.ort.personalize import _batches, open_trainer, selftest_batch
    from mobilepeft.export.ort.to_adapter import adapter_from_ort
    from mobilepeft.export.to_ptd import tensors_from_ort, write_bundle_adapter

    fx = root / "fixtures"
    fx.mkdir()
    data = root / "synth"
    write_synthetic_dataset(data, n_train=8, n_val=4, seed=0)
    adapter = train_adapter(tiny_ckpt, data, root / "run", "lora", steps=2)
    ort = fx / "ort_bundle"
    export_onnx_training(tiny_ckpt, adapter, ort, echo=lambda _: None)
    try:
        from mobilepeft.export.executorch.exporter import export_executorch
    except ImportError as exc:  # pragma: no cover - executorch is a project dependency
        pytest.skip(f"executorch not importable ({exc})")
    export_executorch(tiny_ckpt, fx / "et_bundle", backend="portable", max_seq_len=64, echo=lambda _: None)
    # The on-device loop: the same adapter kept as data, an ORT-trained state of it (a few steps on the
    # self-test batch) and the adapter file Python writes from that state for the Kotlin writer to equal.
    et_adapter = fx / "et_adapter_bundle"
    export_executorch(tiny_ckpt, et_adapter, adapter_dir=adapter, backend="portable", max_seq_len=64,
                      adapter_as_data=True, echo=lambda _: None)
    trainer = open_trainer(read_bundle(ort))
    trainer.set_learning_rate(1e-2)
    for _ in range(10):
        trainer.train_step(selftest_batch(read_bundle(ort))[0])
    trainer.save_checkpoint(root / "trained_checkpoint")
    trainer.export_inference(fx / "trained_inference_model.onnx", json.loads((ort / "manifest.json").read_text())
                             ["onnx_training"]["inference_outputs"])
    write_bundle_adapter(et_adapter, tensors_from_ort(root / "trained_checkpoint", ort, et_adapter), root / "expected_adapter.ptd")
    adapter_section = json.loads((et_adapter / "manifest.json").read_text())["executorch"]["adapter"]
    (fx / "adapter_expect.json").write_text(json.dumps({"tensors": len(adapter_section["tensors"]),
                                                        "bytes": adapter_section["bytes"]}))
    _split_fixtures(tiny_ckpt, adapter, data, fx, root, et_adapter)
    (fx / "foreign_ptd.json").write_text(json.dumps([
        {"case": case, "file": str(path.relative_to(fx)), "tensor": tensor}
        for case, (path, tensor) in foreign_adapter_files(et_adapter / "adapter.ptd", fx / "foreign_ptd").items()]))
    # The native runner's JNI library (runner/, built here against the executorch wheel), and the answers
    # its command line (`answer`, checked against Python's ExecuTorch runtime in test_adapter_as_data.py)
    # gives with the bundle's own adapter and, swapped in, with the ORT-trained file.
    shutil.copy(root / "expected_adapter.ptd", fx / "expected_adapter.ptd")
    runner = build_native_runner(root / "runner-build")
    library = runner.parent / "libmobilepeft_jni.so"
    (fx / "native_questions").mkdir()
    questions = []
    for k, sample in enumerate(json.loads((data / "val.json").read_text())[:4]):
        ppm = fx / "native_questions" / f"q{k}.ppm"
        Image.open(data / sample["image"]).convert("RGB").save(ppm)
        questions.append({"prompt": sample["conversations"][0]["value"], "image": str(ppm.relative_to(fx))})
    (fx / "native_questions.json").write_text(json.dumps(questions))
    done = subprocess.run([str(runner), "answer", "--bundle", str(et_adapter), "--questions", str(fx / "native_questions.json"),
                           "--swap", str(fx / "expected_adapter.ptd"), "--max-new-tokens", "8"],
                          capture_output=True, text=True, check=True)
    passes = json.loads(done.stdout)["passes"]
    native = {"questions": questions, "expected_bundle_adapter": [a["text"] for a in passes[0]["answers"]],
              "expected_personal_adapter": [a["text"] for a in passes[1]["answers"]]}
    if library.is_file():
        native["library"] = str(library)
    (fx / "native.json").write_text(json.dumps(native))

    models = _tokenizer_variants(ort / "tokenizer.model", fx / "tokenizer")
    (fx / "tokenizer_cases.json").write_text(json.dumps(_tokenizer_cases(models)))
    (fx / "conversation_cases.json").write_text(json.dumps(_conversation_cases(ort)))
    manifest = json.loads((ort / "manifest.json").read_text())
    sec = manifest["onnx_training"]
    (fx / "image_cases.json").write_text(json.dumps(_image_cases(fx / "images", manifest["image_preprocessing"]["size"])))
    batches = [{"n": n, "batch_size": b, "steps": s, "seed": seed, "batches": _batches(n, b, s, seed)}
               for n, b, s, seed in [(5, 2, 7, 0), (3, 4, 5, 42), (10, 3, 9, 123456789012), (1, 1, 3, 7), (5, 2, 40, 0)]]
    (fx / "batches.json").write_text(json.dumps(batches))
    (fx / "sha256_cases.json").write_text(json.dumps(_sha256_cases(fx / "sha256")))
    (fx / "ort_expect.json").write_text(json.dumps({
        "hidden_size": manifest["model"]["hidden_size"], "num_image_tokens": manifest["model"]["num_image_tokens"],
        "vocab_size": manifest["model"]["vocab_size"], "seq_len": sec["inputs"][0]["shape"][1],
        "loss_output": sec["loss_output"], "trainable": sec["trainable"],
        "lr": sec["optimizer"]["default_learning_rate"]}))
    open_trainer(read_bundle(ort)).export_inference(fx / "inference_model.onnx", sec["inference_outputs"])
    adapter_from_ort(ort / "checkpoint", ort, root / "expected_adapter")
    return fx


def _split_fixtures(tiny_ckpt: Path, adapter: Path, data: Path, fx: Path, root: Path, et_adapter: Path) -> None:
    """A --train-layers bundle of the same adapter (the top 2 of 4 layers train) and what the Kotlin core must
    match for it: each sample's real vision-encoder and frozen-layer outputs (ORT, here), the training batch
    Python builds from them, the memory estimate, and the adapter files Python writes from a trained state,
    its inference model exported once as one file and once with every tensor in external data."""
    import onnx

    from mobilepeft.export.bundle import read_bundle
    from mobilepeft.export.ort.exporter import export_onnx_training
    from mobilepeft.export.ort.memory import session_estimate_mib
    from mobilepeft.export.ort.personalize import BatchBuilder, open_trainer, selftest_batch
    from mobilepeft.export.ort.to_adapter import adapter_from_ort
    from mobilepeft.export.to_ptd import tensors_from_ort, write_bundle_adapter

    split = fx / "ort_split_bundle"
    export_onnx_training(tiny_ckpt, adapter, split, train_layers=2, echo=lambda _: None)
    bundle = read_bundle(split)
    builder = BatchBuilder(bundle)
    rows, folder = builder.samples(data / "train.json", data)
    rows = rows[:3]
    cases = fx / "split"
    cases.mkdir()
    samples = []
    for i, (row, sample) in enumerate(zip(rows, json.loads((data / "train.json").read_text())[:3], strict=True)):
        builder.image_tokens(row, folder).astype("<f4").tofile(cases / f"image{i}.f32")
        builder.hidden_states(row, folder).astype("<f4").tofile(cases / f"hidden{i}.f32")
        question, answer = (turn["value"] for turn in sample["conversations"][:2])
        samples.append({"question": question.removeprefix("<image>\n"), "answer": answer,
                        "input_ids": row.input_ids.tolist()})
    batch = builder.batch(rows, folder)
    batch["hidden_states"].astype("<f4").tofile(cases / "batch_hidden_states.f32")
    (cases / "cases.json").write_text(json.dumps({
        "samples": samples, "batch_attention_mask": batch["attention_mask"].reshape(-1).tolist(),
        "batch_labels": batch["labels"].tolist(), "estimate_batch_4": session_estimate_mib(bundle, 4)}))

    trainer = open_trainer(bundle)
    trainer.set_learning_rate(1e-2)
    for _ in range(10):
        trainer.train_step(selftest_batch(bundle)[0])
    trainer.save_checkpoint(root / "split_trained_checkpoint")
    inference = cases / "trained_inference_model.onnx"
    trainer.export_inference(inference, bundle.section("onnx_training")["inference_outputs"])
    (cases / "external").mkdir()
    onnx.save(onnx.load(inference), cases / "external" / inference.name, save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    write_bundle_adapter(et_adapter, tensors_from_ort(root / "split_trained_checkpoint", split, et_adapter),
                         root / "expected_split_adapter.ptd")
    adapter_from_ort(root / "split_trained_checkpoint", split, root / "expected_split_adapter")


@pytest.fixture(scope="module")
def kotlin_run(kotlin_tools, core_jar, fixture_dir, tmp_path_factory) -> subprocess.CompletedProcess:
    _, java = kotlin_tools
    # Bundle() keeps its verification stamps in $XDG_CACHE_HOME/mobilepeft/verified: a temporary one, not ~/.cache.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("kotlin-cache"))}
    return subprocess.run([java, "-jar", str(core_jar), str(fixture_dir)], capture_output=True, text=True, timeout=300,
                          env=env)


def test_kotlin_core_tests_pass(kotlin_run):
    output = kotlin_run.stdout + kotlin_run.stderr
    failures = [line for line in output.splitlines() if line.startswith("FAIL ")]
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", kotlin_run.stdout, flags=re.M)
    assert kotlin_run.returncode == 0 and not failures, "Kotlin core tests failed:\n" + "\n".join(failures or [output[-4000:]])
    assert summary and summary[-1][1] == "0", output[-2000:]
    assert int(summary[-1][0]) >= MIN_KOTLIN_TESTS


def test_benchmark_json_from_kotlin_matches_the_schema(kotlin_run, fixture_dir):
    import jsonschema

    schema = json.loads(BENCH_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    inference = json.loads((fixture_dir / "out" / "bench_inference.json").read_text())
    training = json.loads((fixture_dir / "out" / "bench_training.json").read_text())
    for result in (inference, training):
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(result)]
        assert not errors, errors
        assert result["harness"] == "android-app"
    assert inference["runtime"] == "executorch" and inference["vision_encode_ms"] == 13.0
    assert training["runtime"] == "onnxruntime-training" and training["train_steps"] == 40


def test_kotlin_adapter_equals_adapter_from_ort(kotlin_run, fixture_dir):
    from safetensors.numpy import load_file

    ours_dir = fixture_dir / "out" / "adapter_from_onnx"
    expected_dir = fixture_dir.parent / "expected_adapter"
    ours, expected = load_file(ours_dir / "adapter_model.safetensors"), load_file(expected_dir / "adapter_model.safetensors")
    assert sorted(ours) == sorted(expected) and len(ours) > 0
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert np.array_equal(ours[key], value), key
    assert sorted(p.name for p in ours_dir.iterdir()) == sorted(p.name for p in expected_dir.iterdir())


def test_kotlin_adapter_file_equals_the_python_writer(kotlin_run, fixture_dir):
    """The Kotlin writer's adapter.ptd (from ORT's exported inference model) is byte-identical to the
    one `mobilepeft adapter to-ptd` writes from the same ORT checkpoint, and that state is not the
    bundle's own adapter (so copying the template could not pass)."""
    from mobilepeft.export.executorch.ptd import read_tensors

    ours = fixture_dir / "out" / "adapter_from_ort.ptd"
    expected = fixture_dir.parent / "expected_adapter.ptd"
    template = fixture_dir / "et_adapter_bundle" / "adapter.ptd"
    assert ours.read_bytes() == expected.read_bytes()
    moved = [k for k, v in read_tensors(template).items() if not np.array_equal(v, read_tensors(expected)[k])]
    assert len(moved) >= len(read_tensors(template)) // 2, moved


def test_kotlin_writes_the_split_bundles_adapter_like_python(kotlin_run, fixture_dir):
    """From a --train-layers bundle's exported inference model (one file, and all in external data), the
    Kotlin core writes the adapter.ptd and the PEFT adapter Python writes: the layers below the top two keep
    the bundle's values, the top two carry the trained ones."""
    from safetensors.numpy import load_file

    for variant in ("single", "external"):
        ours = fixture_dir / "out" / f"split_adapter_{variant}.ptd"
        assert ours.read_bytes() == (fixture_dir.parent / "expected_split_adapter.ptd").read_bytes(), variant
        ours_dir = fixture_dir / "out" / f"split_adapter_dir_{variant}"
        expected = load_file(fixture_dir.parent / "expected_split_adapter" / "adapter_model.safetensors")
        got = load_file(ours_dir / "adapter_model.safetensors")
        assert sorted(got) == sorted(expected)
        assert all(np.array_equal(got[k], v) for k, v in expected.items()), variant
    bundle_adapter = load_file(fixture_dir / "ort_split_bundle" / "adapter" / "adapter_model.safetensors")
    changed = {k for k, v in expected.items() if not np.array_equal(v, bundle_adapter[k])}
    assert changed and all(".layers.2." in k or ".layers.3." in k for k in changed), sorted(changed)


def test_kotlin_drives_the_native_runner_through_jni(kotlin_run, fixture_dir):
    """The Kotlin core's NativeRunner ran the JNI library (its test passed in the Kotlin suite), and the
    two adapters answer differently, so equal answers after the swap show the swap took effect."""
    native = json.loads((fixture_dir / "native.json").read_text())
    assert "library" in native, "runner/ built no libmobilepeft_jni.so: install a JDK (jni.h)"
    assert re.search(r"^PASS native runner: ", kotlin_run.stdout, flags=re.M), kotlin_run.stdout[-2000:]
    assert native["expected_bundle_adapter"] != native["expected_personal_adapter"]


def test_every_manifest_read_is_a_schema_path():
    from test_app_manifest_keys import check_manifest_reads

    reads, problems = [], []
    sources = _kotlin_files(CORE_MAIN, APP_SRC)
    for file in sources:
        found, bad = check_manifest_reads(file.read_text())
        reads += found
        problems += [f"{file.name}: {p}" for p in bad]
    assert not problems, "\n".join(problems)
    paths = set(reads)
    assert len(reads) >= 60 and {"executorch.methods{}.input[]", "onnx_training.inputs[].shape",
                                 "onnx_training.trainable[].adapter_key", "files{}.bytes"} <= paths
    # Nothing else reads the manifest by key: JSON is parsed only by Manifest (and the adapter metadata
    # update, the verifier's own stamp file and safetensors headers).
    for file in sources:
        if file.name not in ("Manifest.kt", "Json.kt", "AdapterExport.kt", "BundleVerifier.kt", "Safetensors.kt"):
            assert "Json.parse(" not in file.read_text(), f"{file.name} parses JSON; read the manifest through Manifest"


def test_benchmark_keys_are_the_schema_keys():
    from test_app_manifest_keys import check_bench_writes

    found, unknown = check_bench_writes((CORE_MAIN / "dev" / "mobilepeft" / "core" / "BenchStats.kt").read_text())
    assert not unknown, unknown
    keys = set(found)
    design = {"model_load_time_ms", "vision_encode_ms", "prefill_tokens_per_s", "decode_tokens_per_s",
              "time_to_first_token_ms", "peak_rss_mb", "threads", "backend", "quantization", "device",
              "train_step_ms", "train_peak_rss_mb", "runtime", "harness", "prompt_tokens", "generated_tokens",
              "runs", "train_steps", "batch_size"}
    timed = {"vision_encode_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "time_to_first_token_ms", "train_step_ms"}
    assert design | {f"{k}_{s}" for k in timed for s in ("min", "max")} <= keys


def test_core_is_pure_kotlin_and_the_app_uses_the_real_runtime_apis():
    for file in _kotlin_files(CORE_MAIN):
        for imp in re.findall(r"^import\s+([\w.]+)", file.read_text(), flags=re.M):
            assert imp.startswith(("java.", "kotlin.")), f"{file.name} imports {imp}: core must stay pure Kotlin/JVM"
    app = "\n".join(f.read_text() for f in _kotlin_files(APP_SRC))
    for api in ("createTrainingSession", "trainStep", "optimizerStep", "lazyResetGrad", "saveCheckpoint",
                "exportModelForInference", "OnnxTensor.createTensor", "Module.load", "EValue.from", "Tensor.fromBlob"):
        assert api in app, f"the app glue does not call {api}"
    assert not re.search(r"\bTODO\b|NotImplementedError|TODO\(", app + "\n".join(
        f.read_text() for f in _kotlin_files(CORE_MAIN))), "placeholder left in the Android sources"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
