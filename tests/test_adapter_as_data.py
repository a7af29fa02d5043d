"""The on-device loop (issue 22): an ExecuTorch bundle keeps its adapter as data (adapter.ptd), the
phone's ONNX Runtime training state is written into a new adapter file without Python's exporter,
and the deployed program answers with it exactly as PyTorch does with that adapter merged; the
native runner swaps adapters in place (no second load of the base) and refuses files that do not
fit, naming the tensor.

The HyDRA-scheduled and non-LoRA adapters, and 8da4w, are in test_adapter_as_data_methods.py (a
separate file so the exports run on both pytest-xdist workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import build_native_runner, foreign_adapter_files, greedy_reference, piece_ids, train_adapter
from PIL import Image

import mobilepeft
from mobilepeft.adapters.inject import merge_and_unload
from mobilepeft.data.synth import write_personal_dataset
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.executorch.adapter_data import check_adapter_file
from mobilepeft.export.executorch.exporter import export_executorch
from mobilepeft.export.executorch.ptd import read_layout, read_tensors
from mobilepeft.export.executorch.runner import BundleRunner
from mobilepeft.export.ort.exporter import export_onnx_training
from mobilepeft.export.ort.personalize import personalize
from mobilepeft.export.ort.runtime import trainable_arrays
from mobilepeft.export.ort.to_adapter import adapter_from_ort
from mobilepeft.export.to_ptd import tensors_from_adapter, tensors_from_ort, write_bundle_adapter


@pytest.fixture(scope="module")
def loop(tiny_ckpt, synth_data, tmp_path_factory):
    """Desktop-trained LoRA -> ExecuTorch bundle with the adapter as data + ORT bundle -> personalized
    on a user's own words (ORT) -> adapter.ptd written from the ORT state, and the same checkpoint
    as a PEFT adapter for the PyTorch reference."""
    root = tmp_path_factory.mktemp("loop")
    adapter = train_adapter(tiny_ckpt, synth_data, root / "run", "lora", 40)
    et = root / "et"
    export_executorch(tiny_ckpt, et, adapter_dir=adapter, adapter_as_data=True, max_seq_len=256, echo=lambda _: None)
    ort = root / "ort"
    export_onnx_training(tiny_ckpt, adapter, ort, echo=lambda _: None)
    personal = root / "personal"
    write_personal_dataset(personal, n_train=48, n_val=16)
    me = root / "me"
    personalize(ort, personal / "train.json", me, steps=40, lr=3e-3, batch_size=8, echo=lambda _: None)
    ptd = write_bundle_adapter(et, tensors_from_ort(me / "checkpoint", ort, et), me / "adapter.ptd")
    return dict(root=root, adapter=adapter, et=et, ort=ort, personal=personal, me=me, ptd=ptd,
                peft=adapter_from_ort(me / "checkpoint", ort, root / "me-adapter"))


def _questions(personal: Path, n: int) -> list[tuple[str, Path]]:
    rows = json.loads((personal / "val.json").read_text())[:n]
    return [(r["conversations"][0]["value"], personal / r["image"]) for r in rows]


def test_manifest_describes_the_adapter_file(loop):
    bundle = read_bundle(loop["et"], verify="full")
    section = bundle.manifest["executorch"]["adapter"]
    assert "adapter.ptd" not in bundle.manifest["files"]  # replaceable: checked by layout, not by hash
    layout = read_layout(loop["et"] / "adapter.ptd")
    assert {t["key"] for t in section["tensors"]} == set(layout)
    ort_keys = {e["adapter_key"] for e in read_bundle(loop["ort"]).manifest["onnx_training"]["trainable"]}
    assert {t["adapter_key"] for t in section["tensors"]} == ort_keys  # the two bundles share the names
    lora_bytes = sum(int(np.prod(t["shape"])) * 4 for t in section["tensors"])
    assert lora_bytes <= section["bytes"] <= lora_bytes + 128 * len(section["tensors"]) + 16384
    assert section["bytes"] < 0.1 * bundle.manifest["files"]["model.pte"]["bytes"]
    assert bundle.manifest["executorch"]["parity_rel_diff"] < 1e-3


def test_written_adapter_file_holds_the_ort_state_exactly(loop):
    section = read_bundle(loop["et"]).manifest["executorch"]["adapter"]
    sec = read_bundle(loop["ort"]).manifest["onnx_training"]
    state = trainable_arrays(loop["me"] / "checkpoint", sec)
    by_key = {e["adapter_key"]: state[e["name"]] for e in sec["trainable"]}
    written = read_tensors(loop["ptd"])
    worst = max(np.abs((written[t["key"]].T if t["transposed"] else written[t["key"]]) - by_key[t["adapter_key"]]).max()
                for t in section["tensors"])
    assert worst == 0.0
    # The writer is the export's own layout: the desktop adapter written again is the exported file.
    again = write_bundle_adapter(loop["et"], tensors_from_adapter(loop["adapter"]), loop["root"] / "again.ptd")
    assert again.read_bytes() == (loop["et"] / "adapter.ptd").read_bytes()


def test_fp32_program_with_the_phone_written_adapter_answers_like_merged_pytorch(loop):
    reference = mobilepeft.load_vlm(_base_model(loop), adapter=loop["peft"])
    merge_and_unload(reference)
    personalized, base = BundleRunner(loop["et"], adapter=loop["ptd"]), BundleRunner(loop["et"])
    changed = 0
    for question, image in _questions(loop["personal"], 12):
        expected = greedy_reference(reference, question, image)
        got = personalized.generate(question, image, max_new_tokens=8)
        assert piece_ids(reference.tokenizer, got.pieces)[:len(expected)] == expected, question
        changed += got.text != base.generate(question, image, max_new_tokens=8).text
    assert changed >= 6  # the swap has teeth: the user's words replace the base answers


def _base_model(loop) -> Path:
    return Path(read_bundle(loop["et"]).manifest["executorch"]["source"]["model"])


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    return build_native_runner(tmp_path_factory.mktemp("runner-build"))


def _run(runner: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), *args], capture_output=True, text=True, timeout=300)


def _ppm(image: Path, out: Path) -> Path:
    Image.open(image).convert("RGB").save(out)
    return out


def test_native_runner_writes_swaps_and_answers_like_python(loop, runner):
    imported = loop["root"] / "imported.ptd"
    done = _run(runner, "adapter-import", "--bundle", str(loop["et"]), "--ort-bundle", str(loop["ort"]),
                "--checkpoint", str(loop["me"] / "checkpoint"), "--output", str(imported))
    assert done.returncode == 0, done.stderr
    assert imported.read_bytes() == loop["ptd"].read_bytes()  # C++ writer == Python writer, byte for byte
    python = BundleRunner(loop["et"], adapter=imported)
    for k, (question, image) in enumerate(_questions(loop["personal"], 4)):
        ppm = _ppm(image, loop["root"] / f"q{k}.ppm")
        done = _run(runner, "generate", "--bundle", str(loop["et"]), "--adapter", str(imported), "--prompt",
                    question.replace("<image>\n", ""), "--image", str(ppm), "--max-new-tokens", "8")
        assert done.returncode == 0, done.stderr
        native = json.loads(done.stdout)
        expected = python.generate(question, ppm, max_new_tokens=8)
        assert native["text"] == expected.text


def test_native_answer_swaps_between_passes_like_separate_loads(loop, runner, tmp_path):
    """`answer` loads once and swaps: each pass equals Python loading the bundle with that adapter."""
    questions = [{"id": f"q{k}", "prompt": q, "image": _ppm(image, tmp_path / f"q{k}.ppm").name}
                 for k, (q, image) in enumerate(_questions(loop["personal"], 6))]
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    done = _run(runner, "answer", "--bundle", str(loop["et"]), "--questions", str(tmp_path / "questions.json"),
                "--swap", f"{loop['ptd']},{loop['et'] / 'adapter.ptd'}", "--max-new-tokens", "6")
    assert done.returncode == 0, done.stderr
    passes = json.loads(done.stdout)["passes"]
    assert [p["adapter"] for p in passes] == [str(loop["et"] / "adapter.ptd"), str(loop["ptd"]), str(loop["et"] / "adapter.ptd")]
    for p, adapter in zip(passes, (None, loop["ptd"], None), strict=True):
        python = BundleRunner(loop["et"], adapter=adapter)
        expected = [python.generate(q["prompt"], tmp_path / q["image"], max_new_tokens=6).text for q in questions]
        assert [a["text"] for a in p["answers"]] == expected
    assert [a["text"] for a in passes[0]["answers"]] != [a["text"] for a in passes[1]["answers"]]
    assert all(0 < p["swap_ms"] < 1000 for p in passes[1:])

    (tmp_path / "bad.json").write_text(json.dumps([questions[0], {"id": "q1", "image": "x.ppm"}]))
    done = _run(runner, "answer", "--bundle", str(loop["et"]), "--questions", str(tmp_path / "bad.json"))
    assert done.returncode != 0 and "item 1" in done.stderr and "bad.json" in done.stderr


def test_native_swap_keeps_the_base_loaded_once(loop, runner):
    done = _run(runner, "bench", "--bundle", str(loop["et"]), "--swap", str(loop["ptd"]), "--runs", "3",
                "--gen-len", "4", "--prompt-len", "8")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pte_mb = (loop["et"] / "model.pte").stat().st_size / 2**20
    assert result["adapter_bytes"] == loop["ptd"].stat().st_size
    assert 0 < result["adapter_swap_ms"] < 1000
    # Six swaps: a reload of the base would grow RSS by about the program's size each time.
    assert result["rss_after_swap_mb"] - result["rss_before_swap_mb"] < 0.5 * pte_mb
    assert result["time_to_first_token_after_swap_ms"] > 0


def test_adapter_files_that_do_not_fit_are_refused_naming_the_tensor(loop, runner, tmp_path):
    section = read_bundle(loop["et"]).manifest["executorch"]["adapter"]
    before = (loop["et"] / "adapter.ptd").read_bytes()
    for case, (path, tensor) in foreign_adapter_files(loop["ptd"], tmp_path).items():
        with pytest.raises(UserError) as python_refusal:
            check_adapter_file(path, section)
        assert tensor in str(python_refusal.value), case
        cli = subprocess.run([sys.executable, "-m", "mobilepeft", "generate", "--bundle", str(loop["et"]), "--adapter", str(path),
                              "--prompt", "What shape is this?"], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 2 and tensor in cli.stderr and str(path) in cli.stderr, (case, cli.stderr)
        native = _run(runner, "generate", "--bundle", str(loop["et"]), "--adapter", str(path), "--prompt", "x")
        assert native.returncode != 0 and tensor in native.stderr and str(path) in native.stderr, (case, native.stderr)
    assert (loop["et"] / "adapter.ptd").read_bytes() == before


def test_a_refused_write_leaves_the_previous_adapter_file(loop, tmp_path):
    out = tmp_path / "mine.ptd"
    good = write_bundle_adapter(loop["et"], tensors_from_ort(loop["me"] / "checkpoint", loop["ort"], loop["et"]), out)
    previous = good.read_bytes()
    tensors = tensors_from_adapter(loop["adapter"])
    key = sorted(tensors)[0]
    tensors[key] = tensors[key][:, :-1]
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        write_bundle_adapter(loop["et"], tensors, out)
    assert out.read_bytes() == previous


class _CRunner:
    """The runner's C API (runner/include/mobilepeft/runner.h) through ctypes, as the iOS core calls it."""

    def __init__(self, library: Path) -> None:
        import ctypes

        self.ctypes = ctypes
        lib = self.lib = ctypes.CDLL(str(library))
        lib.mobilepeft_runner_open.restype = ctypes.c_void_p
        lib.mobilepeft_runner_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
        lib.mobilepeft_runner_keeps_adapter_as_data.argtypes = [ctypes.c_void_p]
        lib.mobilepeft_runner_active_adapter.restype = ctypes.c_char_p
        lib.mobilepeft_runner_active_adapter.argtypes = [ctypes.c_void_p]
        lib.mobilepeft_runner_swap.restype = ctypes.c_double
        lib.mobilepeft_runner_swap.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.mobilepeft_runner_answer.restype = ctypes.c_void_p
        lib.mobilepeft_runner_answer.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                                 ctypes.POINTER(ctypes.c_void_p)]
        lib.mobilepeft_runner_rss_mb.restype = ctypes.c_double
        lib.mobilepeft_runner_close.argtypes = [ctypes.c_void_p]
        lib.mobilepeft_string_free.argtypes = [ctypes.c_void_p]

    def _take(self, pointer: int | None) -> str:
        text = self.ctypes.string_at(pointer).decode("utf-8")
        self.lib.mobilepeft_string_free(pointer)
        return text

    def call(self, name: str, *args):
        """``(result, error message or None)``."""
        error = self.ctypes.c_void_p()
        result = getattr(self.lib, f"mobilepeft_runner_{name}")(*args, self.ctypes.byref(error))
        return result, (self._take(error.value) if error.value else None)

    def answer(self, handle: int, prompt: str, image: Path) -> str:
        text, error = self.call("answer", handle, prompt.encode(), str(image).encode(), 6)
        assert text, error
        return self._take(text)


def test_c_library_answers_and_swaps_in_place_and_keeps_the_adapter_it_had_on_refusal(loop, runner, tmp_path):
    """libmobilepeft (the iOS core's native runner): load once, answer like Python with each adapter,
    swap in place; a foreign file is refused naming the tensor and the active adapter keeps answering."""
    c = _CRunner(runner.parent / "libmobilepeft.so")
    handle, error = c.call("open", str(tmp_path / "nothing").encode(), 2)
    assert handle is None and str(tmp_path / "nothing") in error

    handle, error = c.call("open", str(loop["et"]).encode(), 2)
    assert handle, error
    try:
        assert c.lib.mobilepeft_runner_keeps_adapter_as_data(handle) == 1
        assert c.lib.mobilepeft_runner_active_adapter(handle).decode() == str(loop["et"] / "adapter.ptd")
        questions = [(q.replace("<image>\n", ""), _ppm(image, tmp_path / f"q{k}.ppm"))
                     for k, (q, image) in enumerate(_questions(loop["personal"], 4))]
        desktop = [c.answer(handle, q, image) for q, image in questions]
        python = BundleRunner(loop["et"])
        assert desktop == [python.generate(q, image, max_new_tokens=6).text for q, image in questions]

        rss_before = c.lib.mobilepeft_runner_rss_mb()
        ms, error = c.call("swap", handle, str(loop["ptd"]).encode())
        assert 0 < ms < 1000, error
        personal = [c.answer(handle, q, image) for q, image in questions]
        python = BundleRunner(loop["et"], adapter=loop["ptd"])
        assert personal == [python.generate(q, image, max_new_tokens=6).text for q, image in questions]
        assert personal != desktop
        pte_mb = (loop["et"] / "model.pte").stat().st_size / 2**20
        assert c.lib.mobilepeft_runner_rss_mb() - rss_before < 0.5 * pte_mb

        for case, (path, tensor) in foreign_adapter_files(loop["ptd"], tmp_path).items():
            ms, error = c.call("swap", handle, str(path).encode())
            assert ms == -1 and tensor in error and str(path) in error, (case, error)
            assert c.lib.mobilepeft_runner_active_adapter(handle).decode() == str(loop["ptd"])
        assert [c.answer(handle, q, image) for q, image in questions] == personal
    finally:
        c.lib.mobilepeft_runner_close(handle)


def _bundle_of_another_decoder(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose manifest says 24 layers of hidden size 2048 (another model's)."""
    import shutil

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"].update(num_hidden_layers=24, hidden_size=2048)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_bundles_of_different_decoders_are_refused_naming_both(loop, tmp_path):
    """An ORT bundle and an ExecuTorch bundle of different models (here: the ExecuTorch bundle's manifest
    says 24 layers of 2048) cannot make an adapter file together; the message names both."""
    other = _bundle_of_another_decoder(loop["et"], tmp_path / "other-et")
    with pytest.raises(UserError) as refusal:
        tensors_from_ort(loop["me"] / "checkpoint", loop["ort"], other)
    message = str(refusal.value)
    assert str(loop["ort"]) in message and str(other) in message
    assert "4 decoder layers of hidden size 128" in message and "24 decoder layers of hidden size 2048" in message


def test_a_phone_that_trains_only_the_top_layers_writes_the_same_file_in_cpp_and_python(loop, runner, tmp_path):
    """An ORT bundle with --train-layers 2: the C++ writer (adapter-import) keeps the ExecuTorch bundle's own
    values below layer 2 and writes byte for byte what the Python writer writes; bundles of different
    decoders are refused by the runner too, naming both."""
    split = tmp_path / "ort-split"
    export_onnx_training(_base_model(loop), loop["adapter"], split, train_layers=2, echo=lambda _: None)
    me = tmp_path / "me"
    personalize(split, loop["personal"] / "train.json", me, steps=5, lr=3e-3, batch_size=8, echo=lambda _: None)
    imported = tmp_path / "imported.ptd"
    done = _run(runner, "adapter-import", "--bundle", str(loop["et"]), "--ort-bundle", str(split),
                "--checkpoint", str(me / "checkpoint"), "--output", str(imported))
    assert done.returncode == 0, done.stderr
    python = write_bundle_adapter(loop["et"], tensors_from_ort(me / "checkpoint", split, loop["et"]), tmp_path / "py.ptd")
    assert imported.read_bytes() == python.read_bytes()
    ours, bundle_own = read_tensors(imported), read_tensors(loop["et"] / "adapter.ptd")
    for key, value in bundle_own.items():
        below = any(f".layers.{i}." in key for i in (0, 1))
        assert np.array_equal(ours[key], value) == below, key

    other = _bundle_of_another_decoder(loop["et"], tmp_path / "other-et")
    done = _run(runner, "adapter-import", "--bundle", str(other), "--ort-bundle", str(split),
                "--checkpoint", str(me / "checkpoint"), "--output", str(tmp_path / "x.ptd"))
    assert done.returncode != 0 and "different models" in done.stderr and str(split) in done.stderr, done.stderr
    assert not (tmp_path / "x.ptd").exists()
