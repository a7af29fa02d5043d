"""Adapter directories: PEFT-compatible LoRA files plus MobileVLM extras.

Layout of an adapter directory written by ``mobilepeft train``::

    adapter_config.json          PEFT LoraConfig (peft_type LORA, r, lora_alpha, target_modules,
                                 rank_pattern, alpha_pattern, task_type CAUSAL_LM, ...)
    adapter_model.safetensors    base_model.model.<path in LlamaForCausalLM>.lora_{A,B}.weight
    mobilepeft_adapter.json      method, vision targets, what else is stored (our own metadata)
    mm_projector.safetensors     trained projector, MobileVLM key names (model.mm_projector.*)
    vision_adapter.safetensors   LoRA on the CLIP tower, if any (MobileVLM key names)

``peft.PeftModel.from_pretrained(LlamaForCausalLM, dir)`` reads the first two and ignores the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mobilepeft.adapters.inject import adapter_layers, inject_adapters, pattern_path
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import LLM_ROOT, VISION_PREFIX
from mobilepeft.errors import UserError
from mobilepeft.io import atomic_dir, save_safetensors, write_json

FORMAT_VERSION = 1
PEFT_PREFIX = "base_model.model."


def _uniform_or_pattern(values: dict[str, float], default: float) -> dict[str, float]:
    """Per-module values that differ from the default, as full-path PEFT patterns."""
    return {path: v for path, v in values.items() if v != default}


def save_adapter(model: nn.Module, spec: AdapterSpec, out_dir: str | Path, *, base_model: str,
                 projector_trained: bool) -> Path:
    """Write the adapter directory atomically (see module docstring)."""
    from mobilepeft.models.mobilevlm import to_checkpoint_key

    layers = adapter_layers(model)
    llm_tensors: dict[str, torch.Tensor] = {}
    vision_tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, layer in layers.items():
        a, b, scaling = layer.to_lora()
        rank = a.shape[0]
        alpha = layer.alpha if layer.method == "lora" else scaling * rank
        if path.startswith(LLM_ROOT):
            key = PEFT_PREFIX + pattern_path(path)
            llm_tensors[key + ".lora_A.weight"] = a
            llm_tensors[key + ".lora_B.weight"] = b
            ranks[pattern_path(path)] = rank
            alphas[pattern_path(path)] = alpha
        else:
            key = to_checkpoint_key(path)
            vision_tensors[key + ".lora_A.weight"] = a
            vision_tensors[key + ".lora_B.weight"] = b
    llm_targets = [t for t in spec.target_modules if not t.startswith(VISION_PREFIX)]
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": llm_targets,
        "rank_pattern": _uniform_or_pattern(ranks, spec.rank),
        "alpha_pattern": _uniform_or_pattern(alphas, spec.alpha),
        "use_rslora": spec.use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "adapter_config.json", peft_config)
        save_safetensors(llm_tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        if vision_tensors:
            save_safetensors(vision_tensors, tmp / "vision_adapter.safetensors", metadata={"format": "pt"})
        if projector_trained:
            proj = {to_checkpoint_key("mm_projector." + k): v for k, v in model.mm_projector.state_dict().items()}
            save_safetensors(proj, tmp / "mm_projector.safetensors", metadata={"format": "pt"})
        write_json(tmp / "mobilepeft_adapter.json", {
            "format_version": FORMAT_VERSION,
            "method": spec.method,
            "spec": spec.to_dict(),
            "vision_target_modules": [t for t in spec.target_modules if t.startswith(VISION_PREFIX)],
            "projector_trained": projector_trained,
            "base_model": base_model,
        })
    return Path(out_dir)


def read_adapter_spec(adapter_dir: str | Path) -> tuple[AdapterSpec, dict]:
    """The spec an adapter directory was trained with (PEFT-only directories work too)."""
    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError("adapter_config.json not found", path=adapter_dir,
                        hint="pass the adapter/ directory written by `mobilepeft train`")
    try:
        peft_cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc.msg})", path=cfg_file) from exc
    if peft_cfg.get("peft_type") != "LORA":
        raise UserError(f"peft_type {peft_cfg.get('peft_type')!r} is not supported (only LORA)",
                        path=cfg_file, field="peft_type")
    meta_file = adapter_dir / "mobilepeft_adapter.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    targets = peft_cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    spec = AdapterSpec(
        method="lora",
        rank=int(peft_cfg["r"]),
        alpha=float(peft_cfg.get("lora_alpha", peft_cfg["r"])),
        dropout=float(peft_cfg.get("lora_dropout", 0.0)),
        target_modules=list(targets) + list(meta.get("vision_target_modules", [])),
        use_rslora=bool(peft_cfg.get("use_rslora", False)),
        rank_pattern=dict(peft_cfg.get("rank_pattern") or {}),
        alpha_pattern=dict(peft_cfg.get("alpha_pattern") or {}),
    )
    return spec, meta


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> AdapterSpec:
    """Inject and load an adapter directory into a freshly loaded base model."""
    from safetensors.torch import load_file

    from mobilepeft.models.mobilevlm import from_checkpoint_key, to_checkpoint_key

    adapter_dir = Path(adapter_dir)
    spec, meta = read_adapter_spec(adapter_dir)
    layers = inject_adapters(model, spec)
    expected: dict[str, torch.Tensor] = {}
    for path, layer in layers.items():
        key = PEFT_PREFIX + pattern_path(path) if path.startswith(LLM_ROOT) else to_checkpoint_key(path)
        expected[key + ".lora_A.weight"] = layer.lora_A.weight
        expected[key + ".lora_B.weight"] = layer.lora_B.weight
    stored: dict[str, torch.Tensor] = {}
    for fname in ("adapter_model.safetensors", "vision_adapter.safetensors"):
        f = adapter_dir / fname
        if f.is_file():
            stored.update(load_file(str(f)))
        elif fname == "adapter_model.safetensors":
            raise UserError("adapter_model.safetensors not found", path=adapter_dir)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise UserError(f"adapter weights do not match adapter_config.json: missing {missing[:4]}, "
                        f"unexpected {unexpected[:4]}", path=adapter_dir)
    with torch.no_grad():
        for key, param in expected.items():
            if stored[key].shape != param.shape:
                raise UserError(f"tensor {key} has shape {tuple(stored[key].shape)}, expected {tuple(param.shape)}",
                                path=adapter_dir / "adapter_model.safetensors")
            param.copy_(stored[key])
        proj_file = adapter_dir / "mm_projector.safetensors"
        if meta.get("projector_trained") and proj_file.is_file():
            proj = {from_checkpoint_key(k)[len("mm_projector."):]: v for k, v in load_file(str(proj_file)).items()}
            model.mm_projector.load_state_dict(proj)
    return spec
