"""``mobilepeft adapter to-ptd``: trained adapter tensors into an ExecuTorch bundle's ``adapter.ptd``.

The sources are the two places a trained adapter lives: an ONNX Runtime training checkpoint (what
the phone holds after personalization; the desktop replay ``mobilepeft personalize`` writes the
same) or an adapter directory of any method (lowered to its exact LoRA form). Both are keyed by
the PEFT name (``adapter_key``), which the ORT bundle's ``trainable`` list and the ExecuTorch
bundle's ``executorch.adapter.tensors`` share; the file is written the way the apps write it
(:func:`mobilepeft.export.executorch.adapter_data.write_adapter_file`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle, read_bundle
from mobilepeft.export.executorch.adapter_data import write_adapter_file
from mobilepeft.export.ort.runtime import trainable_arrays

PROJECTOR_PREFIX = "model.mm_projector."


def tensors_from_ort(checkpoint: str | Path, ort_bundle: str | Path,
                     executorch_bundle: str | Path | None = None) -> dict[str, np.ndarray]:
    """The ORT bundle's adapter by ``adapter_key`` with the checkpoint's trained tensors over it (checked against
    the ORT bundle's list), for ``executorch_bundle``: a bundle that trains only the top layers keeps the
    exported values below. Two bundles of different decoders (layer count, hidden size) are refused."""
    bundle = read_bundle(ort_bundle)
    if executorch_bundle is not None:
        _check_same_decoder(bundle, read_bundle(executorch_bundle))
    section = bundle.section("onnx_training")
    arrays = trainable_arrays(Path(checkpoint), section)
    projector = [e["adapter_key"] for e in section["trainable"] if e["adapter_key"].startswith(PROJECTOR_PREFIX)]
    if projector:
        raise UserError(f"the ORT bundle trains the projector ({projector[0]}), which the ExecuTorch bundle holds "
                        "merged in vision_encoder", path=Path(ort_bundle),
                        hint="export the ORT bundle without --train-projector for the on-device loop")
    exported = tensors_from_adapter(bundle.file(section["adapter_dir"]))
    return exported | {e["adapter_key"]: arrays[e["name"]] for e in section["trainable"]}


def _check_same_decoder(ort: Bundle, executorch: Bundle) -> None:
    def decoder(b: Bundle) -> str:
        m = b.manifest["model"]
        return f"{m['num_hidden_layers']} decoder layers of hidden size {m['hidden_size']}"

    keys = ("num_hidden_layers", "hidden_size")
    if any(ort.manifest["model"][k] != executorch.manifest["model"][k] for k in keys):
        split = ort.manifest["onnx_training"].get("split")
        trains = f", training the top {split['train_layers']}" if split else ""
        raise UserError(f"the ORT bundle {ort.path} has {decoder(ort)}{trains}; the ExecuTorch bundle "
                        f"{executorch.path} has {decoder(executorch)}: they come from different models",
                        hint="export both bundles from the same checkpoint and adapter")


def tensors_from_adapter(adapter_dir: str | Path, model_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """An adapter directory's LLM LoRA tensors by ``adapter_key`` (other methods lowered to LoRA first)."""
    from safetensors.numpy import load_file

    from mobilepeft.adapters.files import read_adapter_spec
    from mobilepeft.merge import lower_adapter

    spec, _ = read_adapter_spec(adapter_dir)
    with tempfile.TemporaryDirectory() as scratch:
        lora_dir = Path(adapter_dir)
        if spec.method != "lora":
            lora_dir = lower_adapter(adapter_dir, Path(scratch) / "lora", model_dir)
        return {k: v.astype(np.float32) for k, v in load_file(lora_dir / "adapter_model.safetensors").items()}


def write_bundle_adapter(executorch_bundle: str | Path, tensors: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write ``out``, an adapter file for ``executorch_bundle`` holding ``tensors``."""
    bundle = read_bundle(executorch_bundle)
    section = bundle.section("executorch")
    if "adapter" not in section:
        raise UserError("the ExecuTorch bundle has its adapter merged into the weights", path=bundle.path,
                        hint="export it with `mobilepeft export executorch --adapter-as-data`")
    return write_adapter_file(Path(out), bundle.path, section["adapter"], tensors)
