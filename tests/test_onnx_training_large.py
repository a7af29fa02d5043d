"""A decoder over protobuf's 2 GB (issue 23): the ORT training bundle keeps its weights as external
data, ONNX Runtime's training API loads it and trains, and the checkpoint and inference model a
session saves round-trip. MobileLLaMA-1.4B's widths (hidden 2048, MLP 5632, vocabulary 32000) at 9
layers (2.4 GB fp32) with a tiny vision tower; ~5 minutes and ~15 GiB, so it runs in CI only
(`make test-slow`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mobilepeft.data.synth import write_personal_dataset
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.ort.exporter import export_onnx_training
from mobilepeft.export.ort.personalize import personalize, run_selftest
from mobilepeft.presets import PRESETS, write_model

pytestmark = pytest.mark.slow
GIB2 = 2**31


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    from mobilepeft.adapters.files import save_adapter
    from mobilepeft.adapters.inject import inject_adapters
    from mobilepeft.adapters.spec import AdapterSpec
    from mobilepeft.loading import load_vlm

    root = tmp_path_factory.mktemp("large")
    spec = copy.deepcopy(PRESETS["mobilevlm-1.7b-shape"])
    spec["llm"]["num_hidden_layers"] = 9
    spec["vision"] = PRESETS["tiny"]["vision"]
    spec.pop("stream", None)
    model_dir = write_model(spec, root / "model")
    model = load_vlm(model_dir, load_tokenizer=False)
    inject_adapters(model, AdapterSpec(method="lora", rank=4, alpha=8))
    save_adapter(model, AdapterSpec(method="lora", rank=4, alpha=8), root / "adapter", base_model=str(model_dir),
                 projector_trained=False)
    del model
    bundle = root / "bundle"
    export_onnx_training(model_dir, root / "adapter", bundle, echo=lambda _: None)
    return dict(root=root, bundle=bundle)


def test_the_bundle_keeps_its_weights_as_external_data(large):
    bundle = read_bundle(large["bundle"], verify="full")
    assert bundle.section("onnx_training")["frozen"]["bytes"] > GIB2
    files = bundle.manifest["files"]
    assert "checkpoint.data" in files or files["checkpoint"]["bytes"] > GIB2
    assert all(f["bytes"] < GIB2 for name, f in files.items() if name.endswith(".onnx"))  # protobuf's limit


def test_ort_loads_the_large_bundle_trains_and_saves_what_reloads(large):
    result = run_selftest(read_bundle(large["bundle"]))
    assert result.passed and np.isfinite(result.train_step_loss)
    data = write_personal_dataset(large["root"] / "personal", n_train=4, n_val=2)
    out = large["root"] / "me"
    report = personalize(large["bundle"], data["train_json"], out, eval_data=data["val_json"], steps=3, lr=1e-3,
                         batch_size=2, echo=lambda _: None)
    assert np.isfinite(report.eval_loss_after) and report.eval_loss_after < report.eval_loss_before
    assert report.inference_model_check < 1e-4  # the >2 GB inference model ORT exported computes the same loss
    continued = personalize(large["bundle"], data["train_json"], large["root"] / "me2", eval_data=data["val_json"],
                            steps=1, lr=1e-3, batch_size=2, checkpoint=out / "checkpoint", echo=lambda _: None)
    assert relative_error(continued.eval_loss_before, report.eval_loss_after) < 1e-4  # the saved checkpoint reloads
