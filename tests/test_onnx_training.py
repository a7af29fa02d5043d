"""On-device personalization, end to end with the real ONNX Runtime training runtime:
export -> ORT self-test equals PyTorch -> 20 ORT steps lower the loss -> the checkpoint comes back
as a PEFT adapter that PyTorch evaluates exactly as ORT does -> merge works; plus the bundle's
guarantees (frozen weights untouched, bad bundles named, atomic export)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import mobilepeft
from mobilepeft.data import SupervisedDataset, collate_batch, load_llava
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import MANIFEST, read_bundle
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.ort.exporter import export_onnx_training
from mobilepeft.export.ort.personalize import (
    BatchBuilder,
    open_trainer,
    personalize,
    run_selftest,
    selftest_batch,
)
from mobilepeft.export.ort.runtime import OrtTrainer, load_checkpoint_state
from mobilepeft.export.ort.to_adapter import adapter_from_ort
from mobilepeft.merge import merge_adapter
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer

RTOL = 1e-4
# (checkpoint fixture, adapter method, optimizer, learning rate, projector trains on device)
CASES = {
    "tiny-lora-adamw": ("tiny_ckpt", "lora", "adamw", 2e-3, False),
    "v2-sharded-multihead-adamw-projector": ("v2_sharded_ckpt", "multihead", "adamw", 1e-3, True),
    "v1-dmlora-sgd-projector": ("v1_bin_ckpt", "dmlora", "sgd", 0.1, True),
}


def _train_adapter(ckpt: Path, data: Path, out: Path, method: str) -> Path:
    cfg = TrainConfig.from_flat(dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data), output_dir=str(out),
                      adapter=method, rank=4, alpha=8, max_steps=4, batch_size=4, lr=1e-2, max_length=256,
                      save_every=0, schedule="fixed", train_projector=True))
    cfg.validate()
    Trainer(cfg, progress=False).run()
    return out / "adapter"


def _subset(data: Path, split: str, start: int, n: int, out: Path) -> Path:
    records = json.loads((data / f"{split}.json").read_text())[start : start + n]
    file = out / f"{split}-{start}-{n}.json"
    file.write_text(json.dumps(records))
    return file


def _pytorch_loss(model, json_file: Path, image_folder: Path) -> float:
    """The model's own forward (vision tower, projector, splicing) on one padded batch of the file."""
    convs, _ = load_llava(json_file, image_folder)
    ds = SupervisedDataset(convs, model.tokenizer, image_folder, model.config.image_size,
                           model.config.num_image_tokens, max_length=10_000)
    batch = collate_batch([ds[i] for i in range(len(ds))], pad_id=model.tokenizer.pad_id)
    with torch.no_grad():
        return float(model(batch["input_ids"], pixel_values=batch["pixel_values"],
                           attention_mask=batch["attention_mask"], labels=batch["labels"]).loss)


@pytest.fixture(scope="module", params=list(CASES))
def round_trip(request, synth_data, tmp_path_factory):
    ckpt_name, method, optimizer, lr, train_projector = CASES[request.param]
    ckpt = request.getfixturevalue(ckpt_name)
    root = tmp_path_factory.mktemp(request.param)
    adapter = _train_adapter(ckpt, synth_data, root / "run", method)
    bundle = root / "bundle"
    export_onnx_training(ckpt, adapter, bundle, optimizer=optimizer, train_projector=train_projector,
                         ort_format=request.param == "tiny-lora-adamw", echo=lambda _: None)
    train = _subset(synth_data, "train", 0, 64, root)
    held_out = _subset(synth_data, "val", 0, 4, root)
    report = personalize(bundle, train, root / "personal", image_folder=synth_data, eval_data=held_out,
                         eval_image_folder=synth_data, steps=20, lr=lr, batch_size=4, echo=lambda _: None)
    personal_adapter = adapter_from_ort(root / "personal" / "checkpoint", bundle, root / "personal-adapter")
    return dict(ckpt=ckpt, bundle=bundle, report=report, adapter=personal_adapter, held_out=held_out,
                data=synth_data, root=root, train_projector=train_projector)


def test_selftest_equals_pytorch(round_trip):
    bundle = read_bundle(round_trip["bundle"], verify="full")
    result = run_selftest(bundle)
    assert result.passed
    # Independently of the exporter's recorded number: the PyTorch model on the bundle's own adapter.
    model = mobilepeft.load_vlm(round_trip["ckpt"], adapter=round_trip["bundle"] / "adapter")
    sample = _subset(round_trip["data"], "train", 0, 1, round_trip["root"])
    ours = _pytorch_loss(model, sample, round_trip["data"])
    assert relative_error(result.ort_eval_loss, ours) < RTOL, (result.ort_eval_loss, ours)
    ort_files = bundle.section("onnx_training").get("ort_format")
    if ort_files:  # the .ort graphs a phone may ship instead compute the same loss
        batch, _ = selftest_batch(bundle)
        trainer = OrtTrainer(bundle.file(ort_files["training_model"]), bundle.file("eval_model.onnx"),
                             bundle.file(ort_files["optimizer_model"]), bundle.file("checkpoint"))
        assert relative_error(trainer.eval_loss(batch), result.ort_eval_loss) < 1e-6


def test_twenty_ort_steps_lower_the_held_out_loss(round_trip):
    report = round_trip["report"]
    print(f"held-out loss {report.eval_loss_before:.4f} -> {report.eval_loss_after:.4f}")
    assert report.eval_loss_after < 0.95 * report.eval_loss_before
    assert np.mean(report.train_losses[-5:]) < np.mean(report.train_losses[:5])
    assert report.inference_model_check < RTOL  # exported inference model == ORT eval


def test_from_ort_adapter_in_pytorch_equals_ort_eval_and_merges(round_trip, tmp_path):
    bundle = read_bundle(round_trip["bundle"])
    trainer = open_trainer(bundle, round_trip["root"] / "personal" / "checkpoint")
    builder = BatchBuilder(bundle)
    rows, folder = builder.samples(round_trip["held_out"], round_trip["data"])
    ort_loss = trainer.eval_loss(builder.batch(rows, folder))

    model = mobilepeft.load_vlm(round_trip["ckpt"], adapter=round_trip["adapter"])
    torch_loss = _pytorch_loss(model, round_trip["held_out"], round_trip["data"])
    print(f"held-out: ORT {ort_loss:.6f}, PyTorch with the from-ort adapter {torch_loss:.6f}")
    assert relative_error(torch_loss, ort_loss) < RTOL
    assert (round_trip["adapter"] / "mm_projector.safetensors").is_file() or not round_trip["train_projector"]

    merged = merge_adapter(round_trip["ckpt"], round_trip["adapter"], tmp_path / "merged")
    merged_loss = _pytorch_loss(mobilepeft.load_vlm(merged), round_trip["held_out"], round_trip["data"])
    assert relative_error(merged_loss, torch_loss) < RTOL


def test_only_trainable_tensors_change_and_frozen_ones_are_byte_identical(round_trip):
    bundle = read_bundle(round_trip["bundle"])
    sec = bundle.section("onnx_training")
    before = dict(load_checkpoint_state(bundle.file(sec["checkpoint"])).parameters)
    after = dict(load_checkpoint_state(round_trip["root"] / "personal" / "checkpoint").parameters)
    assert set(before) == set(after)
    trainable = {e["name"] for e in sec["trainable"]}
    assert all(n in before for n in trainable)
    assert any(n.startswith("mm_projector.") for n in trainable) == round_trip["train_projector"]
    assert not any(n.startswith("mm_projector.") for n in before if n not in trainable)
    frozen = [n for n in before if n not in trainable]
    assert len(frozen) == sec["frozen"]["count"]
    for name in frozen:
        assert np.array(before[name].data).tobytes() == np.array(after[name].data).tobytes(), name
    for name in trainable:
        assert not np.array_equal(np.array(before[name].data), np.array(after[name].data)), name


def test_selftest_batch_matches_the_manifest(round_trip):
    bundle = read_bundle(round_trip["bundle"])
    sec = bundle.section("onnx_training")
    batch, reference = selftest_batch(bundle)
    assert reference == pytest.approx(sec["selftest"]["loss"])
    rows = batch["input_ids"].shape[0]
    for spec in sec["inputs"]:
        assert str(batch[spec["name"]].dtype) == spec["dtype"]
        assert list(batch[spec["name"]].shape) == [rows, *spec["shape"][1:]]
    assert batch["labels"].shape == (rows * bundle.manifest["max_seq_len"],)
    assert int((batch["input_ids"] == -200).sum()) == rows * bundle.manifest["model"]["num_image_tokens"]


ONE_BUNDLE = pytest.mark.parametrize("round_trip", ["tiny-lora-adamw"], indirect=True)


@pytest.fixture()
def bundle_copy(round_trip, tmp_path):
    return Path(shutil.copytree(round_trip["bundle"], tmp_path / "bundle"))


@ONE_BUNDLE
def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "eval_model.onnx").unlink()
    with pytest.raises(UserError, match=r"eval_model\.onnx.*missing"):
        read_bundle(bundle_copy)


@ONE_BUNDLE
def test_wrong_manifest_version_is_named(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    (bundle_copy / MANIFEST).write_text(json.dumps(dict(manifest, manifest_version=99)))
    with pytest.raises(UserError, match=r"manifest\.json.*manifest_version.*99"):
        read_bundle(bundle_copy)


@ONE_BUNDLE
def test_schema_violation_names_the_field(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["onnx_training"]["optimizer"]["type"] = "lion"
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"onnx_training/optimizer/type"):
        read_bundle(bundle_copy)


@ONE_BUNDLE
def test_corrupt_checkpoint_is_named(bundle_copy):
    ckpt = bundle_copy / "checkpoint"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    ckpt.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"checkpoint.*SHA-256"):
        read_bundle(bundle_copy, verify="full")
    ckpt.write_bytes(b"not a flatbuffer")
    with pytest.raises(UserError, match=r"checkpoint.*(corrupt|cannot read)"):
        load_checkpoint_state(ckpt)
    with pytest.raises(UserError, match=r"checkpoint"):
        adapter_from_ort(ckpt, bundle_copy, bundle_copy.parent / "out")


@ONE_BUNDLE
def test_failed_export_leaves_no_bundle_and_keeps_the_old_one(round_trip, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(UserError, match="seq-len"):
        export_onnx_training(round_trip["ckpt"], round_trip["bundle"] / "adapter", out, seq_len=8,
                             echo=lambda _: None)
    assert not out.exists() and os.listdir(tmp_path) == []
    shutil.copytree(round_trip["bundle"], out)
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(UserError):
        export_onnx_training(round_trip["ckpt"], round_trip["bundle"] / "adapter", out, seq_len=8,
                             echo=lambda _: None)
    assert (out / MANIFEST).read_bytes() == before and sorted(os.listdir(tmp_path)) == ["bundle"]


@ONE_BUNDLE
def test_cli_export_check_personalize_from_ort(round_trip, bundle_copy, tmp_path):
    """The commands as users type them: happy paths in-process (typer's runner), bad input in a real
    process (exit status 2, the file named, no traceback)."""
    from typer.testing import CliRunner

    from mobilepeft.export.cli import app

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    def run_process(*args):
        return subprocess.run([sys.executable, "-m", "mobilepeft.export.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    data = round_trip["data"]
    bundle, personal, adapter = tmp_path / "b", tmp_path / "p", tmp_path / "a"
    out = run("export", "onnx-training", "--model", round_trip["ckpt"], "--adapter", round_trip["bundle"] / "adapter",
              "--output-dir", bundle, "--optimizer", "sgd", "--lr", "0.05")
    assert "self-test" in out and "Converting" not in out
    assert read_bundle(bundle).manifest["onnx_training"]["optimizer"] == {
        "type": "sgd", "default_learning_rate": 0.05, "max_grad_norm": 1.0}
    assert json.loads(run("bundle", "check", bundle, "--json"))["passed"] is True

    samples = _subset(data, "train", 0, 4, tmp_path)
    run("personalize", "--bundle", bundle, "--data", samples, "--image-folder", data, "--steps", 2,
        "--batch-size", 2, "--output-dir", personal)
    report = json.loads((personal / "personalize.json").read_text())
    assert len(report["train_losses"]) == 2 and report["learning_rate"] == 0.05
    assert (personal / "inference_model.onnx").is_file()
    again = json.loads(run("personalize", "--bundle", bundle, "--data", samples, "--image-folder", data,
                           "--steps", 1, "--checkpoint", personal / "checkpoint", "--output-dir",
                           tmp_path / "p2") and (tmp_path / "p2" / "personalize.json").read_text())
    assert again["eval_loss_before"] == pytest.approx(report["eval_loss_after"], rel=1e-5)  # continues
    run("adapter", "from-ort", personal / "checkpoint", "--bundle", bundle, "--output-dir", adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"

    (bundle_copy / "optimizer_model.onnx").write_bytes(b"")
    bad = run_process("bundle", "check", bundle_copy)
    assert bad.returncode == 2 and "optimizer_model.onnx" in bad.stderr and "Traceback" not in bad.stderr
    broken = tmp_path / "broken.json"
    records = json.loads(samples.read_text())
    broken.write_text(json.dumps([*records, dict(records[0], id="gone", image="images/missing.png")]))
    bad = run_process("personalize", "--bundle", bundle, "--data", broken, "--image-folder", data,
                      "--output-dir", tmp_path / "never")
    assert bad.returncode == 2 and "missing.png" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "never").exists()


def test_inference_export_from_a_bundle_named_by_a_relative_path(round_trip, tmp_path, monkeypatch):
    """`make demo` names its bundle relative to the working folder; the export runs from a scratch
    folder, so the session must not read its eval model relative to where the export runs."""
    monkeypatch.chdir(round_trip["bundle"].parent)
    bundle = read_bundle(Path(round_trip["bundle"].name))
    trainer = open_trainer(bundle)
    target = tmp_path / "inference_model.onnx"
    trainer.export_inference(target, bundle.section("onnx_training")["inference_outputs"])
    batch, _ = selftest_batch(bundle)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    assert np.isfinite(session.run(None, feeds)[0]).all()
