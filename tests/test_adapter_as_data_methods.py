"""Adapter kept as data (issue 22) for a HyDRA-scheduled adapter (per-module ranks), a non-LoRA
method lowered to LoRA (AdaRing), and the 8da4w base: a swapped-in adapter file answers like the
merged re-export."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import greedy_reference, piece_ids, train_adapter, val_questions

import mobilepeft
from mobilepeft.adapters.inject import merge_and_unload
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.executorch.exporter import export_executorch
from mobilepeft.export.executorch.runner import BundleRunner
from mobilepeft.export.to_ptd import tensors_from_adapter, write_bundle_adapter
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer


def _hydra_adapter(ckpt: Path, data: Path, out: Path) -> Path:
    cfg = TrainConfig.from_flat(dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data),
                                     output_dir=str(out), adapter="lora", rank=4, alpha=8, max_steps=12, batch_size=8,
                                     lr=3e-3, max_length=256, save_every=0, schedule="hydra", realloc_every=3,
                                     realloc_window=[0.1, 0.9]))
    cfg.validate()
    Trainer(cfg, progress=False).run()
    return out / "adapter"


@pytest.mark.parametrize("method", ["hydra", "adaring"])
def test_fp32_adapter_as_data_answers_token_for_token(method, tiny_ckpt, synth_data, tmp_path):
    adapter = (_hydra_adapter(tiny_ckpt, synth_data, tmp_path / "run") if method == "hydra"
               else train_adapter(tiny_ckpt, synth_data, tmp_path / "run", "adaring", 6))
    bundle = tmp_path / "et"
    export_executorch(tiny_ckpt, bundle, adapter_dir=adapter, adapter_as_data=True, max_seq_len=256,
                      echo=lambda _: None)
    manifest = read_bundle(bundle, verify="full").manifest
    assert manifest["executorch"]["parity_rel_diff"] < 1e-3
    ranks = {t["shape"][1] for t in manifest["executorch"]["adapter"]["tensors"] if t["key"].endswith("lora_a_t")}
    if method == "hydra":
        assert len(ranks) > 1, ranks  # non-uniform ranks from the schedule, kept per module
    # Written again from the adapter directory (lowered to LoRA) it is the exported file, byte for byte.
    again = write_bundle_adapter(bundle, tensors_from_adapter(adapter, tiny_ckpt), tmp_path / "again.ptd")
    assert again.read_bytes() == (bundle / "adapter.ptd").read_bytes()
    reference = mobilepeft.load_vlm(tiny_ckpt, adapter=adapter)
    runner = BundleRunner(bundle, adapter=again)
    for question, image in val_questions(synth_data, 6):
        expected = greedy_reference(reference, question, image)
        got = runner.generate(question, image, max_new_tokens=8)
        assert piece_ids(reference.tokenizer, got.pieces)[:len(expected)] == expected, question


def test_8da4w_swapped_adapter_agrees_with_the_merged_re_export(tiny_ckpt, synth_data, tmp_path):
    first = train_adapter(tiny_ckpt, synth_data, tmp_path / "first", "lora", 20)
    second = train_adapter(tiny_ckpt, synth_data, tmp_path / "second", "lora", 40, lr=4e-3)
    as_data, merged = tmp_path / "as-data", tmp_path / "merged"
    export_executorch(tiny_ckpt, as_data, adapter_dir=first, adapter_as_data=True, quantize="8da4w",
                      max_seq_len=256, echo=lambda _: None)
    export_executorch(tiny_ckpt, merged, adapter_dir=second, quantize="8da4w", max_seq_len=256, echo=lambda _: None)
    swapped = write_bundle_adapter(as_data, tensors_from_adapter(second), tmp_path / "second.ptd")
    fp32 = mobilepeft.load_vlm(tiny_ckpt, adapter=second)
    merge_and_unload(fp32)
    runner_swapped, runner_merged, runner_first = (BundleRunner(as_data, adapter=swapped), BundleRunner(merged),
                                                   BundleRunner(as_data))
    questions = val_questions(synth_data, 40)
    agree = differ_from_first = 0
    for question, image in questions:
        answer = runner_swapped.generate(question, image, max_new_tokens=8).text
        agree += answer == runner_merged.generate(question, image, max_new_tokens=8).text
        differ_from_first += answer != runner_first.generate(question, image, max_new_tokens=8).text
    assert agree / len(questions) >= 0.95, agree
    assert differ_from_first >= 1  # the swapped file, not the exported one, is what answered
