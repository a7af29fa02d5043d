"""The adapter kept as data: LoRA tensors outside the ``.pte``, in an ``adapter.ptd`` an app rewrites.

Why this mechanism (measured, docs/on-device-loop.md): the LoRA matrices are *named external
constants* of ``text_decoder`` (ExecuTorch's program-data separation), consumed by ExecuTorch's
own kernels rather than XNNPACK, which would copy and repack them at load. A kernel reads a
constant through its pointer on every call, so a runner that serves the ``.ptd`` from its own
buffer switches adapters by overwriting that buffer: no reload, and the base (in the ``.pte``,
packed by XNNPACK once) is never touched. Runtimes that cannot hand over a buffer (the Python
bindings, the apps' ``Module``) load the program again with the other ``.ptd``.

Every method is lowered to its exact LoRA form first (per-module ranks from HyDRA included). The
matrices are stored transposed, ``lora_a_t = Aᵀ [in, r]`` and ``lora_b_t = Bᵀ [r, out]``, so the
graph multiplies ``x @ Aᵀ @ Bᵀ`` with no per-call transpose of the weights; writers transpose
the trained ``A [r, in]`` and ``B [out, r]`` they get from ONNX Runtime (the manifest says which).
Adapter layers outside the LLM (CLIP tower) and the projector are merged into ``vision_encoder``:
they do not train on the phone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilepeft.adapters.files import adapter_key
from mobilepeft.adapters.inject import adapter_layers
from mobilepeft.adapters.targets import LLM_ROOT
from mobilepeft.errors import UserError
from mobilepeft.export.executorch.ptd import fill_ptd, head_size, read_layout

ADAPTER_FILE = "adapter.ptd"
TAG = "adapter"  # ExecuTorch writes the constants tagged TAG to TAG + ".ptd"
#: Suffixes of the adapter constants' names: what the export tags and the partitioner leaves alone.
SUFFIXES = ("lora_a_t", "lora_b_t", "lora_bias")


class LoraLinearAsData(nn.Module):
    """``base(x) + (x @ Aᵀ @ Bᵀ)·scaling (+ Δb)``, the LoRA tensors as buffers the export moves to the ``.ptd``."""

    def __init__(self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, scaling: float,
                 bias: torch.Tensor | None, key: str) -> None:
        super().__init__()
        self.base = base
        self.scaling = float(scaling)
        self.adapter_key = key
        self.register_buffer("lora_a_t", A.detach().t().contiguous().float())
        self.register_buffer("lora_b_t", B.detach().t().contiguous().float())
        self.lora_bias = None
        if bias is not None:
            self.register_buffer("lora_bias", bias.detach().contiguous().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x) + torch.matmul(torch.matmul(x, self.lora_a_t), self.lora_b_t) * self.scaling
        return out if self.lora_bias is None else out + self.lora_bias


def keep_llm_adapter_unmerged(model: nn.Module) -> None:
    """Put :class:`LoraLinearAsData` in place of every LLM adapter layer and merge the others (CLIP
    tower). Rank-0 modules (HyDRA) carry no adapter: they are merged (a no-op) too."""
    from mobilepeft.adapters.inject import merge_and_unload

    layers = adapter_layers(model)
    if not layers:
        raise UserError("--adapter-as-data needs an adapter", field="adapter", hint="pass --adapter DIR")
    forms = {path: layer.to_lora() for path, layer in layers.items()}  # before any layer is replaced
    for path, layer in layers.items():
        form = forms[path]
        if path.startswith(LLM_ROOT) and form.rank > 0:
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, LoraLinearAsData(
                layer.base_layer, form.A, form.B, form.scaling, form.bias, adapter_key(path)))
    merge_and_unload(model)  # the adapter layers left


def load_with_adapter_as_data(model_dir: Path, adapter_dir: str | Path, echo: Callable[[str], None]) -> nn.Module:
    """The model in eval mode with the LLM's adapter as :class:`LoraLinearAsData` and the rest merged."""
    from mobilepeft.loading import load_vlm

    echo("[1/3] loading; the LLM's adapter stays unmerged (kept as data), the CLIP tower's is merged")
    model = load_vlm(Path(model_dir), adapter=adapter_dir)
    keep_llm_adapter_unmerged(model)
    return model.eval()


def is_adapter_constant(name: str) -> bool:
    """Whether a placeholder / constant name is one of the adapter's tensors."""
    return name.endswith(SUFFIXES)


def tag_adapter_constants(node: torch.fx.Node) -> str | None:
    """``ExecutorchBackendConfig(external_constants=...)``: adapter constants go to ``adapter.ptd``."""
    return TAG if node.op == "placeholder" and is_adapter_constant(node.name) else None


def xnnpack_partitioner_sparing_adapter():
    """XNNPACK for everything but the ops that read an adapter constant (XNNPACK would pack a copy at load)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class _Partitioner(XnnpackPartitioner):
        def get_matched_nodes_from_configs(self, ep):
            adapter = {n for n in ep.graph.nodes if n.op == "placeholder" and is_adapter_constant(n.name)}
            return [match for match in super().get_matched_nodes_from_configs(ep)
                    if not any(n in adapter or adapter.intersection(n.all_input_nodes) for n in match)]

    return _Partitioner()


def adapter_tensors(decoder: nn.Module) -> list[dict[str, Any]]:
    """The manifest's description of each adapter tensor (before the offsets are known)."""
    entries = []
    for name, module in decoder.named_modules():
        if not isinstance(module, LoraLinearAsData):
            continue
        pairs = [("lora_a_t", module.adapter_key + ".lora_A.weight", True),
                 ("lora_b_t", module.adapter_key + ".lora_B.weight", True)]
        if module.lora_bias is not None:
            pairs.append(("lora_bias", module.adapter_key + ".lora_B.bias", False))
        for attr, source, transposed in pairs:
            tensor = getattr(module, attr)
            entries.append({"key": f"{name}.{attr}", "adapter_key": source, "dtype": "float32",
                            "shape": list(tensor.shape), "transposed": transposed,
                            "scaling": module.scaling})
    return entries


def adapter_section(ptd: Path, tensors: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``executorch.adapter``: the file, its shared head and every tensor's place in it."""
    import hashlib

    data = ptd.read_bytes()
    layout = read_layout(ptd, data)
    if set(layout) != {t["key"] for t in tensors}:
        raise RuntimeError(f"ExecuTorch wrote adapter tensors {sorted(layout)[:3]}..., expected "
                           f"{sorted(t['key'] for t in tensors)[:3]}...")
    head = head_size(layout)
    for t in tensors:
        t["offset"], t["bytes"] = layout[t["key"]].offset, layout[t["key"]].nbytes
    return {"file": ptd.name, "format": "executorch_flat_tensor", "bytes": len(data), "head_bytes": head,
            "head_sha256": hashlib.sha256(data[:head]).hexdigest(), "tensors": tensors}


def check_adapter_file(path: Path, section: dict[str, Any], data: bytes | None = None) -> bytes:
    """Refuse a ``.ptd`` that does not fit the bundle, naming the first tensor that does not; its bytes."""
    data = path.read_bytes() if data is None else data
    layout = read_layout(path, data)
    hint = "write adapter files for this bundle with `mobilepeft adapter to-ptd` (or the app's writer)"
    for t in section["tensors"]:
        found = layout.get(t["key"])
        if found is None:
            raise UserError(f"adapter tensor {t['key']!r} ({t['adapter_key']}) is missing", path=path, hint=hint)
        if list(found.shape) != t["shape"] or found.dtype != t["dtype"]:
            raise UserError(f"adapter tensor {t['key']!r} is {found.dtype} {list(found.shape)}, the bundle expects "
                            f"{t['dtype']} {t['shape']} (another rank or another model?)", path=path, hint=hint)
    extra = sorted(set(layout) - {t["key"] for t in section["tensors"]})
    if extra:
        raise UserError(f"adapter tensor {extra[0]!r} is not in the bundle's manifest", path=path, hint=hint)
    return data


def write_adapter_file(out: Path, bundle_dir: Path, section: dict[str, Any],
                       tensors: dict[str, np.ndarray]) -> Path:
    """Write ``out`` from trained tensors keyed by ``adapter_key`` in PEFT's layout (``A [r,in]``,
    ``B [out,r]``), as a phone does: the bundle's head, then each tensor (transposed where stored so)."""
    from mobilepeft.io import atomic_file

    template = bundle_dir / section["file"]
    head = check_adapter_file(template, section)[:section["head_bytes"]]
    placed = {}
    for t in section["tensors"]:
        source = tensors.get(t["adapter_key"])
        if source is None:
            raise UserError(f"no trained tensor {t['adapter_key']!r} for adapter tensor {t['key']!r}",
                            hint="the tensors must come from this bundle's adapter (same methods, ranks, targets)")
        array = np.asarray(source, dtype=np.float32)
        array = array.T if t["transposed"] else array
        if list(array.shape) != t["shape"]:
            raise UserError(f"trained tensor {t['adapter_key']!r} has shape {list(source.shape)}; the bundle "
                            f"stores {t['key']!r} as {t['shape']}{' (transposed)' if t['transposed'] else ''}",
                            hint="personalize the adapter this bundle was exported with")
        placed[t["key"]] = (t["offset"], array)
    with atomic_file(out, "wb") as fh:
        fh.write(fill_ptd(head, section["bytes"], placed))
    return out
