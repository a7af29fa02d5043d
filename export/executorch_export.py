"""``mobilepeft export executorch``: a merged MobileVLM as one ExecuTorch program ExecuTorch's own runner drives.

The ``.pte`` follows ExecuTorch's multimodal convention, so ``MultimodalRunner`` (C++, the Python
binding, Android's ``LlmModule``, the iOS runner) runs it with no model-specific code:

* ``vision_encoder``: ``pixel_values [1,3,S,S]`` (normalised float, manifest ``image_preprocessing``)
  -> image tokens ``[1,P,D]`` (CLIP tower + LDP projector);
* ``token_embedding``: ``tokens [1,T]`` -> ``[1,T,D]``;
* ``text_decoder``: ``(embeddings [1,T,D], cache_position [T])`` -> logits ``[1,T,V]``, with the
  static KV cache inside (mutable buffers, :mod:`mobilepeft.export.kv_decoder`);
* metadata methods the runner reads: ``get_max_seq_len``, ``get_max_context_len``,
  ``get_bos_id``, ``get_eos_ids``, ``get_vocab_size``, ``use_kv_cache``, ``enable_dynamic_shape``.

``--quantize 8da4w`` (torchao, the scheme ExecuTorch's LLM examples ship): the decoder's linears get
int4 weights in symmetric groups of 32 with int8 dynamic per-token activations (XNNPACK's
blockwise kernels); ``lm_head`` keeps int8 per-channel weights (as llama.cpp keeps its output
layer above 4 bits: 4-bit logits cost the most agreement with the fp32 model for the least
memory); token embeddings are int8 per row; the vision encoder, run once per image, stays fp32.

The export verifies itself before the bundle appears: the program, run by ExecuTorch's runtime,
must reproduce the PyTorch modules it was lowered from (fp32: the model itself; 8da4w: the
torchao-quantized modules) on a real prompt + image; for 8da4w the distance to the fp32 model is
recorded too.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import base_manifest, write_manifest
from mobilepeft.export.kv_decoder import StaticCacheDecoder, TokenEmbedding
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.training_graph import VisionEncoder
from mobilepeft.io import atomic_dir, atomic_file
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM

BACKENDS = ("xnnpack", "portable")
QUANTIZATIONS = ("none", "8da4w")
GROUP_SIZE = 32
PTE_FILE = "model.pte"
# XNNPACK reorders fp32 accumulations (measured ~1e-6). Its int8/int4 kernels round scales and
# activations differently from torchao's reference ops, and the differences compound with depth:
# measured 1.4e-2 at 4 layers (demo model), 7.8e-2 at 24 (1.7B shape). A wrong lowering is off by
# O(1) (asymmetric int4 groups, whose zero points XNNPACK ignores, were 0.18 off in ONE layer).
PARITY_RTOL = {"none": 1e-3, "8da4w": 0.15}


def export_executorch(model_dir: str | Path, out_dir: str | Path, *, adapter_dir: str | Path | None = None,
                      backend: str = "xnnpack", quantize: str = "none", max_seq_len: int | None = None,
                      echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the bundle ``out_dir`` (``model.pte``, tokenizer, ``manifest.json``) and return the manifest."""
    from mobilepeft.adapters.inject import merge_and_unload
    from mobilepeft.loading import load_vlm

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}", field="backend", hint=f"choose from {', '.join(BACKENDS)}")
    if quantize not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {quantize!r}", field="quantize",
                        hint=f"choose from {', '.join(QUANTIZATIONS)}")
    model_dir = Path(model_dir)
    echo("[1/3] loading" + (" and merging the adapter" if adapter_dir else ""))
    model = load_vlm(model_dir, adapter=adapter_dir)
    if adapter_dir is not None:
        merge_and_unload(model)
    model.eval()
    limit = model.llm.config.max_position_embeddings
    max_seq_len = max_seq_len or min(limit, 2048)
    if not model.config.num_image_tokens < max_seq_len <= limit:
        raise UserError(f"--max-seq-len {max_seq_len} must exceed the {model.config.num_image_tokens} image tokens "
                        f"and not exceed the model's {limit} positions", field="max-seq-len")
    modules = export_modules(model, max_seq_len)
    probe = _probe_inputs(model)
    tokenizer, base, methods = model.tokenizer, base_manifest(model, model_dir, max_seq_len), _signatures(model)
    with torch.no_grad():
        fp32_logits = model(probe.ids[None], pixel_values=probe.pixels).logits
    reference, quantization = fp32_logits, {}
    if quantize == "8da4w":
        echo("      quantizing 8da4w (torchao)")
        quantization = quantize_8da4w(modules)
        reference = _prefill(_eager_methods(modules), probe)
    with atomic_dir(out_dir) as tmp:
        echo(f"[2/3] exporting and lowering to ExecuTorch ({backend}, {quantize}, max_seq_len {max_seq_len})")
        program = _lower(modules, model, max_seq_len, backend)
        with atomic_file(tmp / PTE_FILE, "wb") as fh:
            fh.write(program.buffer)
        # The weights live in the program now. Drop PyTorch's copies and the serialised buffer
        # before the runtime loads (and XNNPACK repacks) another: at 1.7B, fp32, keeping them
        # took the self-test past 20 GB.
        del program, modules, model
        gc.collect()
        echo("[3/3] self-test: ExecuTorch runtime vs PyTorch")
        et_logits = _prefill(executorch_methods(tmp / PTE_FILE), probe)
        gap = relative_error(et_logits.numpy(), reference.numpy())
        echo(f"      prefill logits rel. diff {gap:.1e} (tolerance {PARITY_RTOL[quantize]:.2g})")
        if not gap <= PARITY_RTOL[quantize]:
            raise UserError(f"the lowered program disagrees with PyTorch (prefill logits rel. diff {gap:.1e}, "
                            f"tolerance {PARITY_RTOL[quantize]:.2g}); no bundle was written",
                            hint="try --backend portable and report the model config")
        if quantization:
            quantization["fp32_rel_diff"] = relative_error(et_logits.numpy(), fp32_logits.numpy())
            echo(f"      vs the fp32 model: prefill logits rel. diff {quantization['fp32_rel_diff']:.2f}")
        tokenizer.save(tmp)
        section = {
            "file": PTE_FILE,
            "backend": backend,
            "quantization": quantize,
            **({"quantization_detail": quantization} if quantization else {}),
            "dtype": "float32",
            "methods": methods,
            "image_input": "normalised float pixels, NCHW, as image_preprocessing describes (not uint8)",
            "source": {"model": str(model_dir), "adapter": None if adapter_dir is None else str(adapter_dir)},
            "parity_rel_diff": gap,
        }
        manifest = write_manifest(tmp, dict(base, executorch=section))
    return manifest


def _signatures(model: MobileVLMForCausalLM) -> dict[str, Any]:
    """The three methods' inputs and outputs as the manifest states them."""
    size, hidden, tokens = model.config.image_size, model.config.hidden_size, model.config.num_image_tokens
    return {
        "vision_encoder": {"input": ["pixel_values", "float32", [1, 3, size, size]],
                           "output": ["image_tokens", "float32", [1, tokens, hidden]]},
        "token_embedding": {"input": ["tokens", "int64", [1, "T"]],
                            "output": ["embeddings", "float32", [1, "T", hidden]]},
        "text_decoder": {"input": ["embeddings", "float32", [1, "T", hidden], "cache_position", "int64", ["T"]],
                         "output": ["logits", "float32", [1, "T", model.llm.config.vocab_size]]},
    }


def export_modules(model: MobileVLMForCausalLM, max_seq_len: int) -> dict[str, torch.nn.Module]:
    """The three export-friendly modules, by method name, sharing the model's own weights."""
    return {
        "vision_encoder": VisionEncoder(model, include_projector=True).eval(),
        "token_embedding": TokenEmbedding(model).eval(),
        "text_decoder": StaticCacheDecoder(model, max_seq_len).eval(),
    }


def quantize_8da4w(modules: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Quantize the export modules in place (see the module docstring); returns the manifest's description."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    decoder = modules["text_decoder"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(decoder, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                 weight_granularity=PerGroup(GROUP_SIZE)),
                  lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn != "lm_head")
        quantize_(decoder, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                 weight_granularity=PerAxis(0)),
                  lambda module, fqn: fqn == "lm_head")
        quantize_(modules["token_embedding"], IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  lambda module, fqn: isinstance(module, torch.nn.Embedding))
    return {
        "linear": f"int4 weights, symmetric groups of {GROUP_SIZE}; int8 dynamic per-token activations",
        "lm_head": "int8 per-channel weights; int8 dynamic per-token activations",
        "token_embedding": "int8 per-row weights",
        "vision_encoder": "float32",
    }


def _lower(modules: dict[str, torch.nn.Module], model: MobileVLMForCausalLM, max_seq_len: int, backend: str):
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from torch.export import Dim, export

    size, hidden = model.config.image_size, model.config.hidden_size
    seq = Dim("seq", min=1, max=max_seq_len)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        programs = {
            "vision_encoder": export(modules["vision_encoder"], (torch.zeros(1, 3, size, size),), strict=False),
            "token_embedding": export(modules["token_embedding"], (torch.zeros(1, 2, dtype=torch.long),),
                                      dynamic_shapes=({1: seq},), strict=False),
            "text_decoder": export(modules["text_decoder"], (torch.zeros(1, 2, hidden), torch.arange(2)),
                                   dynamic_shapes=({1: seq}, {0: seq}), strict=False),
        }
        partitioner = []
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioner = [XnnpackPartitioner()]
        tok = model.tokenizer
        edge = to_edge_transform_and_lower(
            programs, partitioner=partitioner, compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods={
                "get_max_seq_len": max_seq_len, "get_max_context_len": max_seq_len,
                "get_bos_id": tok.bos_id, "get_eos_ids": [tok.eos_id],
                "get_vocab_size": model.llm.config.vocab_size, "use_kv_cache": True, "enable_dynamic_shape": True,
            })
        # Folds the quantize/dequantize pairs around weights into packed constants (8da4w).
        return edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))


@dataclass
class _Probe:
    ids: torch.Tensor  # [T] prompt ids with one IMAGE_TOKEN_INDEX slot
    pixels: torch.Tensor  # [1,3,S,S]


def _probe_inputs(model: MobileVLMForCausalLM) -> _Probe:
    from mobilepeft.data.template import build_prompt_ids

    size = model.config.image_size
    pixels = torch.zeros(1, 3, size, size).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(0))
    return _Probe(torch.tensor(build_prompt_ids("<image>\nWhat is in the picture?", model.tokenizer)), pixels)


def executorch_methods(pte: Path) -> dict[str, Callable]:
    """The program's three methods as callables returning their first output (quantized kernels registered)."""
    from executorch.runtime import Runtime

    load_executorch_kernels()
    program = Runtime.get().load_program(str(pte))
    return {name: (lambda method: lambda *args: method.execute(list(args))[0])(program.load_method(name))
            for name in ("vision_encoder", "token_embedding", "text_decoder")}


def _eager_methods(modules: dict[str, torch.nn.Module]) -> dict[str, Callable]:
    def decode(embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        modules["text_decoder"].reset()
        return modules["text_decoder"](embeds, positions)

    return {"vision_encoder": modules["vision_encoder"], "token_embedding": modules["token_embedding"],
            "text_decoder": decode}


@torch.no_grad()
def _prefill(methods: dict[str, Callable], probe: _Probe) -> torch.Tensor:
    """Prefill logits of the probe through one runtime's three methods, spliced as a runner splices."""
    from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX

    slot = int((probe.ids == IMAGE_TOKEN_INDEX).nonzero()[0])
    embed = methods["token_embedding"]
    embeds = torch.cat([embed(probe.ids[None, :slot]), methods["vision_encoder"](probe.pixels),
                        embed(probe.ids[None, slot + 1:])], dim=1)
    return methods["text_decoder"](embeds, torch.arange(embeds.shape[1]))


def load_executorch_kernels() -> None:
    """Register ExecuTorch's quantized kernels (int8 embeddings, weight dequantisation) with the runtime."""
    import executorch.kernels.quantized  # noqa: F401
