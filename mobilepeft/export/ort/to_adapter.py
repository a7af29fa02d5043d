"""``mobilepeft adapter from-ort``: an on-device ORT checkpoint back to a PEFT adapter directory.

The bundle keeps the LoRA adapter it was exported from (``adapter/``: PEFT config, our
metadata, the frozen extras such as a CLIP-tower LoRA, the layers below ``--train-layers`` or a
projector that did not train on the device). The result is that directory with the trained tensors
read from the checkpoint over it, so
``mobilepeft merge``, PEFT and every exporter take it like any trained adapter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from mobilepeft.adapters.files import META_FILE, PROJECTOR_FILE
from mobilepeft.export.bundle import read_bundle
from mobilepeft.export.ort.runtime import trainable_arrays
from mobilepeft.io import save_safetensors, write_json
from mobilepeft.outputs import atomic_output

ADAPTER_FILE = "adapter_model.safetensors"


def adapter_from_ort(checkpoint: str | Path, bundle_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir``: the bundle's adapter with the trainable tensors taken from ``checkpoint``."""
    checkpoint = Path(checkpoint)
    bundle = read_bundle(bundle_dir)
    sec = bundle.section("onnx_training")
    arrays = trainable_arrays(checkpoint, sec)
    lora: dict[str, torch.Tensor] = {}
    projector: dict[str, torch.Tensor] = {}
    for entry in sec["trainable"]:
        target = projector if entry["adapter_key"].startswith("model.mm_projector.") else lora
        target[entry["adapter_key"]] = torch.from_numpy(arrays[entry["name"]])
    source = bundle.file(sec["adapter_dir"])
    lora = load_file(source / ADAPTER_FILE) | lora  # what did not train on the phone keeps its exported value
    with atomic_output(out_dir, "adapter") as tmp:
        for file in source.iterdir():
            if file.is_file():
                shutil.copyfile(file, tmp / file.name)
        save_safetensors(lora, tmp / ADAPTER_FILE, metadata={"format": "pt"})
        if projector:
            save_safetensors(projector, tmp / PROJECTOR_FILE, metadata={"format": "pt"})
            meta = json.loads((tmp / META_FILE).read_text(encoding="utf-8"))
            write_json(tmp / META_FILE, dict(meta, projector_trained=True))
    return Path(out_dir)
