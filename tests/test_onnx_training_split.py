"""Training only the top layers on the phone (issue 23, ``--train-layers K``): the frozen layers below
become an inference model run once per sample, the ORT training graph holds the top K layers, the
norm and the LM head. With float32 frozen layers the split computes exactly what the whole decoder
computes; the adapter below K keeps its exported values through ``adapter from-ort`` and the
``adapter.ptd`` writer; int8 frozen layers stay close; bad splits are refused by name."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import train_adapter
from safetensors.numpy import load_file

from mobilepeft.data.synth import write_personal_dataset
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.ort.exporter import export_onnx_training
from mobilepeft.export.ort.personalize import BatchBuilder, mean_loss, open_trainer, personalize
from mobilepeft.export.ort.to_adapter import adapter_from_ort
from mobilepeft.export.to_ptd import tensors_from_ort

TRAIN_LAYERS = 2  # of the tiny model's 4


@pytest.fixture(scope="module")
def split(tiny_ckpt, synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    adapter = train_adapter(tiny_ckpt, synth_data, root / "run", "lora", 20)
    bundles = {}
    for name, layers, weights in (("full", None, "int8"), ("fp32", TRAIN_LAYERS, "float32"), ("int8", TRAIN_LAYERS, "int8")):
        bundles[name] = root / name
        export_onnx_training(tiny_ckpt, adapter, bundles[name], train_layers=layers, prefix_weights=weights,
                             echo=lambda _: None)
    personal = root / "personal"
    write_personal_dataset(personal, n_train=32, n_val=16)
    return dict(root=root, ckpt=tiny_ckpt, adapter=adapter, bundles=bundles, personal=personal)


def _held_out_loss(bundle_dir, personal, checkpoint=None) -> float:
    bundle = read_bundle(bundle_dir)
    builder = BatchBuilder(bundle)
    rows, folder = builder.samples(personal / "val.json", None)
    return mean_loss(open_trainer(bundle, checkpoint), builder, rows, folder, 4)


def test_manifest_describes_the_split_and_only_top_layers_train(split):
    sec = read_bundle(split["bundles"]["int8"]).section("onnx_training")
    s = sec["split"]
    assert (s["train_layers"], s["frozen_layers"], s["num_hidden_layers"], s["hidden_size"]) == (2, 2, 4, 128)
    assert [i["name"] for i in s["graph_inputs"]] == ["hidden_states", "attention_mask"]
    layers = {int(t["name"].split(".layers.")[1].split(".")[0]) for t in sec["trainable"]}
    assert layers == {2, 3}
    full = read_bundle(split["bundles"]["full"]).section("onnx_training")
    assert len(sec["trainable"]) * 2 == len(full["trainable"])
    # The training graph holds only its layers: its frozen weights are a fraction of the whole decoder's.
    assert sec["frozen"]["bytes"] < 0.8 * full["frozen"]["bytes"]
    assert 0 < s["selftest_rel_error"] < 0.15  # int8 frozen layers: close, not equal


def test_split_with_float32_frozen_layers_computes_what_the_whole_decoder_computes(split):
    full = _held_out_loss(split["bundles"]["full"], split["personal"])
    fp32 = _held_out_loss(split["bundles"]["fp32"], split["personal"])
    int8 = _held_out_loss(split["bundles"]["int8"], split["personal"])
    print(f"held-out loss: whole decoder {full:.5f}, split fp32 {fp32:.5f}, split int8 {int8:.5f}")
    assert relative_error(fp32, full) < 1e-4
    assert relative_error(int8, full) < 0.05


def test_split_personalization_lowers_the_loss_and_keeps_the_layers_below(split):
    bundle, personal, out = split["bundles"]["fp32"], split["personal"], split["root"] / "me"
    report = personalize(bundle, personal / "train.json", out, eval_data=personal / "val.json", steps=20, lr=3e-3,
                         batch_size=8, echo=lambda _: None)
    assert report.eval_loss_after < 0.5 * report.eval_loss_before
    assert report.inference_model_check < 1e-4

    exported = load_file(bundle / "adapter" / "adapter_model.safetensors")
    personal_adapter = load_file(adapter_from_ort(out / "checkpoint", bundle, split["root"] / "me-adapter")
                                 / "adapter_model.safetensors")
    from_ort = tensors_from_ort(out / "checkpoint", bundle)
    assert set(personal_adapter) == set(exported) and set(exported) <= set(from_ort)
    for key, value in exported.items():
        top = any(f".layers.{i}." in key for i in (2, 3))
        assert np.array_equal(personal_adapter[key], from_ort[key])
        assert np.array_equal(personal_adapter[key], value) != top, key  # below K: as exported; top K: trained


def test_bad_splits_are_refused_by_name(split, tmp_path):
    with pytest.raises(UserError, match="4 decoder layers"):
        export_onnx_training(split["ckpt"], split["adapter"], tmp_path / "a", train_layers=5, echo=lambda _: None)
    with pytest.raises(UserError, match="--train-projector"):
        export_onnx_training(split["ckpt"], split["adapter"], tmp_path / "b", train_layers=2, train_projector=True,
                             echo=lambda _: None)
    done = subprocess.run([sys.executable, "-m", "mobilepeft", "export", "onnx-training", "--model", str(split["ckpt"]),
                           "--adapter", str(split["adapter"]), "--output-dir", str(tmp_path / "c"), "--train-layers", "2",
                           "--prefix-weights", "int4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "int4" in done.stderr and "prefix-weights" in done.stderr, done.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_session_over_the_memory_limit_is_refused_before_anything_loads(split, tmp_path):
    from mobilepeft.export.ort.memory import check_memory

    bundle = read_bundle(split["bundles"]["int8"])
    estimate = check_memory(bundle, 8, None)
    checkpoint_mib = bundle.manifest["files"]["checkpoint"]["bytes"] / 2**20
    assert estimate["training"] > 2 * checkpoint_mib and estimate["frozen_graphs"] > 0
    assert check_memory(bundle, 8, max(estimate.values()) + 1) == estimate
    assert check_memory(bundle, 1, None)["training"] < estimate["training"]  # logits grow with the batch
    out = tmp_path / "me"
    done = subprocess.run([sys.executable, "-m", "mobilepeft", "personalize", "--bundle", str(bundle.path), "--data",
                           str(split["personal"] / "train.json"), "--output-dir", str(out), "--batch-size", "8",
                           "--memory-limit-mib", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "needs about" in done.stderr and "limit is 1 MiB" in done.stderr, done.stderr
    assert str(bundle.path) in done.stderr and not out.exists()
