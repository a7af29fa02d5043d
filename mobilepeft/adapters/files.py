"""Adapter directories: PEFT-compatible LoRA files, native files for the other methods, MobileVLM extras.

A LoRA adapter directory (``mobilepeft train --adapter lora``, or ``mobilepeft adapter to-lora``)::

    adapter_config.json          PEFT LoraConfig (peft_type LORA, r, lora_alpha, target_modules,
                                 rank_pattern, alpha_pattern, task_type CAUSAL_LM, ...)
    adapter_model.safetensors    base_model.model.<path in LlamaForCausalLM>.lora_{A,B}.weight
    mobilepeft_adapter.json      method, full spec, vision targets, base model (our metadata)
    mm_projector.safetensors     trained projector, MobileVLM key names (model.mm_projector.*)
    vision_adapter.safetensors   LoRA on the CLIP tower, if any (MobileVLM key names)

``peft.PeftModel.from_pretrained(LlamaForCausalLM, dir)`` reads the first two and ignores the rest.

multihead, dmlora and adaring adapters keep their own parametrisation (so training can go on)
in ``adapter_model.safetensors`` keyed by the parameter names inside ``MobileVLMForCausalLM``,
with ``mobilepeft_adapter.json`` and no ``adapter_config.json`` (PEFT cannot run them); their
exact PEFT LoRA form comes from ``mobilepeft adapter to-lora``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from mobilepeft.adapters.base import LoRAForm
from mobilepeft.adapters.inject import adapter_layers, adapter_parameters, inject_adapters
from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import LLM_ROOT, VISION_PREFIX, pattern_path
from mobilepeft.errors import UserError
from mobilepeft.io import save_safetensors, write_json
from mobilepeft.outputs import atomic_output

FORMAT_VERSION = 1
PEFT_PREFIX = "base_model.model."
META_FILE = "mobilepeft_adapter.json"
PROJECTOR_FILE = "mm_projector.safetensors"


def lowered_lora(model: nn.Module, spec: AdapterSpec) -> tuple[AdapterSpec, dict[str, LoRAForm]]:
    """The exact plain-LoRA form of every adapter layer and the LoRA spec describing it.

    The most common rank/alpha become ``r``/``lora_alpha``; the rest go to the patterns under
    full module paths, which PEFT matches exactly.
    """
    forms: dict[str, LoRAForm] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, layer in adapter_layers(model).items():
        form = layer.to_lora()
        forms[path] = form
        ranks[path] = form.rank
        # LoRA keeps its own alpha (it may be rsLoRA-scaled); others get alpha with alpha/r = scaling.
        alphas[path] = layer.lowered_alpha(form)
    if not forms:
        raise UserError("the model has no adapter layers to lower")
    keep_rslora = spec.method == "lora" and spec.use_rslora
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    lora = AdapterSpec(
        method="lora", rank=rank, alpha=alpha, dropout=spec.dropout, target_modules=list(spec.target_modules),
        use_rslora=keep_rslora, lora_bias=any(f.bias is not None for f in forms.values()),
        rank_pattern={pattern_path(p): r for p, r in ranks.items() if r != rank},
        alpha_pattern={pattern_path(p): a for p, a in alphas.items() if a != alpha},
    )
    return lora, forms


def save_adapter(model: nn.Module, spec: AdapterSpec, out_dir: str | Path, *, base_model: str,
                 projector_trained: bool, lowered_from: str | None = None, nominal_rank: int | None = None) -> Path:
    """Write the adapter directory atomically (see module docstring for the layout).

    ``nominal_rank`` is the budget-defining rank (``--rank``); by default ``spec.rank``, which a
    lowered or rescheduled adapter no longer equals, so those pass the original's.
    """
    nominal_rank = spec.rank if nominal_rank is None else nominal_rank
    with atomic_output(out_dir, "adapter") as tmp:
        if spec.method == "lora" or lowered_from:
            spec = _write_peft_lora(model, spec, tmp, base_model)
        else:
            native = {name: p.detach() for name, p in adapter_parameters(model).items()}
            save_safetensors(native, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        if projector_trained:
            save_projector(model, tmp / PROJECTOR_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "method": spec.method,
            "nominal_rank": nominal_rank,
            "spec": spec.to_dict(),
            "vision_target_modules": [t for t in spec.target_modules if t.startswith(VISION_PREFIX)],
            "projector_trained": projector_trained,
            "base_model": base_model,
        }
        if lowered_from:
            meta["lowered_from"] = lowered_from
        write_json(tmp / META_FILE, meta)
    return Path(out_dir)


def adapter_key(path: str) -> str:
    """Where a module's (or a parameter's) adapter tensors are stored: PEFT's key under the LLM,
    the MobileVLM checkpoint name elsewhere (CLIP tower, projector)."""
    from mobilepeft.models.mobilevlm import to_checkpoint_key

    return PEFT_PREFIX + pattern_path(path) if path.startswith(LLM_ROOT) else to_checkpoint_key(path)


def _write_peft_lora(model: nn.Module, spec: AdapterSpec, tmp: Path, base_model: str) -> AdapterSpec:
    lora, forms = lowered_lora(model, spec)
    llm_tensors: dict[str, torch.Tensor] = {}
    vision_tensors: dict[str, torch.Tensor] = {}
    for path, form in forms.items():
        key = adapter_key(path)
        tensors = llm_tensors if path.startswith(LLM_ROOT) else vision_tensors
        tensors[key + ".lora_A.weight"] = form.A
        tensors[key + ".lora_B.weight"] = form.B
        if lora.lora_bias:  # PEFT adds scaling·lora_B.bias
            bias = form.bias if form.bias is not None else torch.zeros(form.B.shape[0], dtype=form.B.dtype)
            tensors[key + ".lora_B.bias"] = bias / form.scaling
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": [t for t in lora.target_modules if not t.startswith(VISION_PREFIX)],
        "rank_pattern": {k: v for k, v in lora.rank_pattern.items() if not _is_vision(k, forms)},
        "alpha_pattern": {k: v for k, v in lora.alpha_pattern.items() if not _is_vision(k, forms)},
        "use_rslora": lora.use_rslora,
        "lora_bias": lora.lora_bias,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    write_json(tmp / "adapter_config.json", peft_config)
    save_safetensors(llm_tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    if vision_tensors:
        save_safetensors(vision_tensors, tmp / "vision_adapter.safetensors", metadata={"format": "pt"})
    return lora


def _is_vision(pattern_key: str, forms: dict[str, LoRAForm]) -> bool:
    return not any(p.startswith(LLM_ROOT) and pattern_path(p) == pattern_key for p in forms)


def read_adapter_spec(adapter_dir: str | Path) -> tuple[AdapterSpec, dict]:
    """The spec an adapter directory was trained with (plain PEFT LoRA directories work too)."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UserError("adapter directory not found", path=adapter_dir,
                        hint="pass the adapter/ directory written by `mobilepeft train`")
    meta_file = adapter_dir / META_FILE
    meta = _read_json(meta_file) if meta_file.is_file() else {}
    if meta.get("method", "lora") != "lora":
        return AdapterSpec.from_dict(meta["spec"]), meta
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError("neither adapter_config.json nor mobilepeft_adapter.json found", path=adapter_dir,
                        hint="pass the adapter/ directory written by `mobilepeft train`")
    peft_cfg = _read_json(cfg_file)
    if peft_cfg.get("peft_type") != "LORA":
        raise UserError(f"peft_type {peft_cfg.get('peft_type')!r} is not supported (only LORA)",
                        path=cfg_file, field="peft_type")
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
        lora_bias=bool(peft_cfg.get("lora_bias", False)),
    )
    if meta.get("spec"):  # patterns of vision modules live only in our metadata
        spec.rank_pattern = {**meta["spec"].get("rank_pattern", {}), **spec.rank_pattern}
        spec.alpha_pattern = {**meta["spec"].get("alpha_pattern", {}), **spec.alpha_pattern}
    return spec, meta


def resolve_base_model(adapter_dir: str | Path, meta: dict, model_dir: str | Path | None, why: str) -> Path:
    """``model_dir`` if given, else the base model the adapter records; it must be a checkpoint."""
    model_dir = model_dir or meta.get("base_model")
    if not model_dir or not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"base model {model_dir!r} not found ({why})", path=adapter_dir,
                        hint="pass --model with the checkpoint directory the adapter was trained on")
    return Path(model_dir)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc.msg}, line {exc.lineno})", path=path) from exc


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> AdapterSpec:
    """Inject and load an adapter directory into a freshly loaded base model."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    spec, meta = read_adapter_spec(adapter_dir)
    layers = inject_adapters(model, spec)
    if spec.method == "lora":
        expected: dict[str, torch.Tensor] = {}
        for path, layer in layers.items():
            for name, p in layer.own_parameters():
                expected[f"{adapter_key(path)}.{name}"] = p
        files = ("adapter_model.safetensors", "vision_adapter.safetensors")
    else:
        expected = adapter_parameters(model)
        files = ("adapter_model.safetensors",)
    stored: dict[str, torch.Tensor] = {}
    for fname in files:
        f = adapter_dir / fname
        if f.is_file():
            stored.update(load_file(str(f)))
        elif fname == "adapter_model.safetensors":
            raise UserError("adapter_model.safetensors not found", path=adapter_dir)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise UserError(f"adapter weights do not match its config: missing {missing[:4]}, unexpected "
                        f"{unexpected[:4]}", path=adapter_dir,
                        hint="the directory may be from another model or a different --target-modules")
    with torch.no_grad():
        for key, param in expected.items():
            if stored[key].shape != param.shape:
                raise UserError(f"tensor {key} has shape {tuple(stored[key].shape)}, expected {tuple(param.shape)}",
                                path=adapter_dir / "adapter_model.safetensors",
                                hint="the adapter was trained on a model of another size")
            param.copy_(stored[key])
    proj_file = adapter_dir / PROJECTOR_FILE
    if meta.get("projector_trained") and proj_file.is_file():
        load_projector(model, proj_file)
    return spec


def save_projector(model: nn.Module, file: Path) -> None:
    """The projector's weights under their MobileVLM checkpoint names (``model.mm_projector.*``)."""
    from mobilepeft.models.mobilevlm import to_checkpoint_key

    proj = {to_checkpoint_key("mm_projector." + k): v for k, v in model.mm_projector.state_dict().items()}
    save_safetensors(proj, file, metadata={"format": "pt"})


def load_projector(model: nn.Module, file: Path) -> None:
    from safetensors.torch import load_file

    from mobilepeft.models.mobilevlm import from_checkpoint_key

    state = {from_checkpoint_key(k)[len("mm_projector."):]: v for k, v in load_file(str(file)).items()}
    try:
        model.mm_projector.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"projector weights do not fit this model: {exc}", path=file) from exc

