"""``mobilepeft export executorch``: a merged MobileVLM as one ExecuTorch program ExecuTorch's own runner drives.

The ``.pte`` follows ExecuTorch's multimodal convention, so ``MultimodalRunner`` (C++, the Python
binding, Android's ``LlmModule``, the iOS runner) runs it with no model-specific code:

* ``vision_encoder``: ``pixel_values [1,3,S,S]`` (normalised float, manifest ``image_preprocessing``)
  -> image tokens ``[1,P,D]`` (CLIP tower + LDP projector);
* ``token_embedding``: ``tokens [1,T]`` -> ``[1,T,D]``;
* ``text_decoder``: ``(embeddings [1,T,D], cache_position [T])`` -> logits ``[1,T,V]``, with the
  static KV cache inside (mutable buffers, :mod:`mobilepeft.export.graphs.kv_decoder`);
* metadata methods the runner reads: ``get_max_seq_len``, ``get_max_context_len``,
  ``get_bos_id``, ``get_eos_ids``, ``get_vocab_size``, ``use_kv_cache``, ``enable_dynamic_shape``.

``--quantize 8da4w`` (torchao, the scheme ExecuTorch's LLM examples ship): the decoder's linears get
int4 weights in symmetric groups of 32 with int8 dynamic per-token activations (XNNPACK's
blockwise kernels); ``lm_head`` keeps int8 per-channel weights (as llama.cpp keeps its output
layer above 4 bits: 4-bit logits cost the most agreement with the fp32 model for the least
memory); token embeddings are int8 per row; the vision encoder, run once per image, stays fp32.

``--backend coreml`` hands the three methods to ExecuTorch's Core ML delegate (iOS 18 target, fp16;
the KV cache becomes Core ML state). Core ML has no ``index_copy``, so that decoder writes its cache
as one slice at ``cache_position[0]`` (consecutive positions, as every runner passes). The manifest's
``delegation`` counts, per method, the operator nodes inside delegate payloads and those left to
ExecuTorch's portable kernels (for Core ML: none).

The export verifies itself before the bundle appears: the program, run by ExecuTorch's runtime,
must reproduce the PyTorch modules it was lowered from (fp32: the model itself; 8da4w: the
torchao-quantized modules) on a real prompt + image; for 8da4w the distance to the fp32 model is
recorded too. A Core ML delegate runs only on Apple hardware, so there the exported graphs the
partitioner received are checked instead (``parity_checked_on``).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import base_manifest, write_manifest
from mobilepeft.export.executorch.adapter_data import (
    ADAPTER_FILE,
    adapter_section,
    adapter_tensors,
    load_with_adapter_as_data,
    tag_adapter_constants,
    xnnpack_partitioner_sparing_adapter,
)
from mobilepeft.export.executorch.runtime_version import executorch_version
from mobilepeft.export.graphs.kv_decoder import StaticCacheDecoder, TokenEmbedding
from mobilepeft.export.graphs.source_model import load_merged, prefill, probe_inputs, resolve_max_seq_len
from mobilepeft.export.graphs.vision import VisionEncoder
from mobilepeft.export.numerics import relative_error
from mobilepeft.io import atomic_file
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM
from mobilepeft.outputs import atomic_output

BACKENDS = ("xnnpack", "portable", "coreml")
QUANTIZATIONS = ("none", "8da4w")
GROUP_SIZE = 32
PTE_FILE = "model.pte"
LM_HEAD = ("lm_head", "lm_head.base")  # the output layer, plain or under an adapter kept as data
# XNNPACK reorders fp32 accumulations (measured ~1e-6). Its int8/int4 kernels round scales and
# activations differently from torchao's reference ops, and the differences compound with depth:
# measured 1.4e-2 at 4 layers (demo model), 7.8e-2 at 24 (1.7B shape). A wrong lowering is off by
# O(1) (asymmetric int4 groups, whose zero points XNNPACK ignores, were 0.18 off in ONE layer).
PARITY_RTOL = {"none": 1e-3, "8da4w": 0.15}


def export_executorch(model_dir: str | Path, out_dir: str | Path, *, adapter_dir: str | Path | None = None,
                      backend: str = "xnnpack", quantize: str = "none", max_seq_len: int | None = None,
                      adapter_as_data: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the bundle ``out_dir`` (``model.pte``, tokenizer, ``manifest.json``; with
    ``adapter_as_data`` also ``adapter.ptd``, see :mod:`.adapter_data`) and return the manifest."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}", field="backend", hint=f"choose from {', '.join(BACKENDS)}")
    if quantize not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {quantize!r}", field="quantize",
                        hint=f"choose from {', '.join(QUANTIZATIONS)}")
    if backend == "coreml" and quantize != "none":
        raise UserError("--quantize 8da4w is an XNNPACK scheme; the Core ML delegate runs fp16", field="quantize",
                        hint="use --quantize none, or `mobilepeft export coreml --compress int4` for int4 weights")
    if adapter_as_data and (adapter_dir is None or backend == "coreml"):
        raise UserError("--adapter-as-data needs --adapter and an ExecuTorch CPU backend (xnnpack or portable)",
                        field="adapter-as-data", hint="pass --adapter DIR; for Core ML export the merged model")
    model_dir = Path(model_dir)
    model = load_with_adapter_as_data(model_dir, adapter_dir, echo) if adapter_as_data else \
        load_merged(model_dir, adapter_dir, echo)
    max_seq_len = resolve_max_seq_len(model, max_seq_len)
    coreml = backend == "coreml"
    modules = export_modules(model, max_seq_len, contiguous_writes=coreml)
    adapter_entries = adapter_tensors(modules["text_decoder"]) if adapter_as_data else []
    probe = probe_inputs(model)
    tokenizer, base, methods = model.tokenizer, base_manifest(model, model_dir, max_seq_len), _signatures(model)
    with torch.no_grad():
        fp32_logits = model(probe.ids[None], pixel_values=probe.pixels).logits
    reference, quantization = fp32_logits, {}
    if quantize == "8da4w":
        echo("      quantizing 8da4w (torchao)")
        quantization = quantize_8da4w(modules)
        reference = prefill(_eager_methods(modules), probe)
    with atomic_output(out_dir, "bundle") as tmp:
        echo(f"[2/3] exporting and lowering to ExecuTorch ({backend}, {quantize}, max_seq_len {max_seq_len})")
        exported = _export(modules, model)
        if coreml:
            # ExecuTorch's Core ML delegate runs only on Apple hardware: check the exported graphs the
            # partitioner receives (all of it goes to Core ML, see `delegation`) instead.
            checked_on, logits = "exported_program", prefill({k: v.module() for k, v in exported.items()}, probe)
        program, delegation = _lower(exported, model, max_seq_len, backend, adapter_as_data)
        with atomic_file(tmp / PTE_FILE, "wb") as fh:
            fh.write(program.buffer)
        adapter_file = None
        if adapter_as_data:
            program.write_tensor_data_to_file(str(tmp))
            adapter_file = tmp / ADAPTER_FILE
        # The weights live in the program now. Drop PyTorch's copies and the serialised buffer
        # before the runtime loads (and XNNPACK repacks) another: at 1.7B, fp32, keeping them
        # took the self-test past 20 GB.
        del program, exported, modules, model
        gc.collect()
        if coreml:
            echo("[3/3] self-test: exported program vs PyTorch (the Core ML runtime needs Apple hardware)")
        else:
            echo("[3/3] self-test: ExecuTorch runtime vs PyTorch")
            checked_on, logits = "executorch_runtime", prefill(executorch_methods(tmp / PTE_FILE, adapter_file), probe)
        gap = relative_error(logits.numpy(), reference.numpy())
        echo(f"      prefill logits rel. diff {gap:.1e} (tolerance {PARITY_RTOL[quantize]:.2g})")
        if not gap <= PARITY_RTOL[quantize]:
            raise UserError(f"the lowered program disagrees with PyTorch (prefill logits rel. diff {gap:.1e}, "
                            f"tolerance {PARITY_RTOL[quantize]:.2g}); no bundle was written",
                            hint="try --backend portable and report the model config")
        if quantization:
            quantization["fp32_rel_diff"] = relative_error(logits.numpy(), fp32_logits.numpy())
            echo(f"      vs the fp32 model: prefill logits rel. diff {quantization['fp32_rel_diff']:.2f}")
        tokenizer.save(tmp)
        section = {
            "file": PTE_FILE,
            "runtime_version": executorch_version(),
            "backend": backend,
            "quantization": quantize,
            **({"quantization_detail": quantization} if quantization else {}),
            # The Core ML delegate computes in fp16 (as on the Neural Engine); the methods' I/O stays fp32.
            "dtype": "float16" if coreml else "float32",
            "methods": methods,
            "delegation": delegation,
            "image_input": "normalised float pixels, NCHW, as image_preprocessing describes (not uint8)",
            "source": {"model": str(model_dir), "adapter": None if adapter_dir is None else str(adapter_dir)},
            "parity_rel_diff": gap,
            "parity_checked_on": checked_on,
        }
        if adapter_file is not None:
            section["adapter"] = adapter_section(adapter_file, adapter_entries)
            echo(f"      adapter kept as data: {ADAPTER_FILE}, {len(adapter_entries)} tensors, "
                 f"{section['adapter']['bytes'] / 1e6:.2f} MB (model.pte {(tmp / PTE_FILE).stat().st_size / 1e6:.1f} MB)")
        manifest = write_manifest(tmp, dict(base, executorch=section),
                                  replaceable=(ADAPTER_FILE,) if adapter_file is not None else ())
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


def export_modules(model: MobileVLMForCausalLM, max_seq_len: int, *, contiguous_writes: bool = False
                   ) -> dict[str, torch.nn.Module]:
    """The three export-friendly modules, by method name, sharing the model's own weights.

    ``contiguous_writes``: cache writes as one slice (Core ML has no ``index_copy``; see
    :class:`StaticCacheDecoder`).
    """
    return {
        "vision_encoder": VisionEncoder(model, include_projector=True).eval(),
        "token_embedding": TokenEmbedding(model).eval(),
        "text_decoder": StaticCacheDecoder(model, max_seq_len, contiguous_writes=contiguous_writes).eval(),
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
                  lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn not in LM_HEAD)
        quantize_(decoder, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                 weight_granularity=PerAxis(0)),
                  lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn in LM_HEAD)
        quantize_(modules["token_embedding"], IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  lambda module, fqn: isinstance(module, torch.nn.Embedding))
    return {
        "linear": f"int4 weights, symmetric groups of {GROUP_SIZE}; int8 dynamic per-token activations",
        "lm_head": "int8 per-channel weights; int8 dynamic per-token activations",
        "token_embedding": "int8 per-row weights",
        "vision_encoder": "float32",
    }


def _export(modules: dict[str, torch.nn.Module], model: MobileVLMForCausalLM) -> dict[str, Any]:
    """``torch.export`` programs of the three methods, the sequence length dynamic."""
    from torch.export import Dim, export

    size, hidden = model.config.image_size, model.config.hidden_size
    seq = Dim("seq", min=1, max=modules["text_decoder"].max_tokens_per_call)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "vision_encoder": export(modules["vision_encoder"], (torch.zeros(1, 3, size, size),), strict=False),
            "token_embedding": export(modules["token_embedding"], (torch.zeros(1, 2, dtype=torch.long),),
                                      dynamic_shapes=({1: seq},), strict=False),
            "text_decoder": export(modules["text_decoder"], (torch.zeros(1, 2, hidden), torch.arange(2)),
                                   dynamic_shapes=({1: seq}, {0: seq}), strict=False),
        }


def _lower(programs: dict[str, Any], model: MobileVLMForCausalLM, max_seq_len: int, backend: str,
           adapter_as_data: bool = False):
    """The ExecuTorch program (``programs`` are consumed) and per-method delegation counts."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    from mobilepeft.export.quiet import quiet_coremltools

    tok = model.tokenizer
    with torch.no_grad(), warnings.catch_warnings(), quiet_coremltools():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(
            programs, partitioner=_partitioners(backend, adapter_as_data), compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods={
                "get_max_seq_len": max_seq_len, "get_max_context_len": max_seq_len,
                "get_bos_id": tok.bos_id, "get_eos_ids": [tok.eos_id],
                "get_vocab_size": model.llm.config.vocab_size, "use_kv_cache": True, "enable_dynamic_shape": True,
            })
        delegation = {name: delegation_counts(edge.exported_program(name).graph_module) for name in programs}
        # Folds the quantize/dequantize pairs around weights into packed constants (8da4w).
        # The reinplace pass writes each step's keys and values into the cache buffers in place (an out-of-place
        # index_put copied every layer's whole cache twice per call: docs/deploy-executorch.md).
        config = ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True, run_reinplace_pass=True,
                                         external_constants=tag_adapter_constants if adapter_as_data else False)
        return edge.to_executorch(config), delegation


def _partitioners(backend: str, adapter_as_data: bool = False) -> list:
    if backend == "xnnpack" and adapter_as_data:
        return [xnnpack_partitioner_sparing_adapter()]
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        # iOS 18: the KV cache becomes Core ML state (MLState); fp16 as the Neural Engine computes.
        specs = CoreMLBackend.generate_compile_specs(compute_precision=ct.precision.FLOAT16,
                                                     minimum_deployment_target=ct.target.iOS18)
        return [CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=True)]
    return []


def delegation_counts(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """Operator nodes inside delegate payloads vs left to ExecuTorch's own kernels (``getitem`` excluded:
    it only unpacks a delegate's outputs)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    table = info.get_operator_delegation_dataframe()
    table = table[~table["op_type"].isin(["getitem", "Total"])]
    return {"delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_nodes": int(table["occurrences_in_delegated_graphs"].sum()),
            "non_delegated_nodes": int(table["occurrences_in_non_delegated_graphs"].sum())}


def executorch_methods(pte: Path, adapter: Path | None = None) -> dict[str, Callable]:
    """The program's three methods as callables returning their first output (quantized kernels
    registered); ``adapter``: the ``.ptd`` of an adapter kept as data."""
    from executorch.runtime import Runtime

    load_executorch_kernels()
    program = Runtime.get().load_program(str(pte), data_path=None if adapter is None else str(adapter))
    return {name: (lambda method: lambda *args: method.execute(list(args))[0])(program.load_method(name))
            for name in ("vision_encoder", "token_embedding", "text_decoder")}


def _eager_methods(modules: dict[str, torch.nn.Module]) -> dict[str, Callable]:
    def decode(embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        modules["text_decoder"].reset()
        return modules["text_decoder"](embeds, positions)

    return {"vision_encoder": modules["vision_encoder"], "token_embedding": modules["token_embedding"],
            "text_decoder": decode}


def load_executorch_kernels() -> None:
    """Register ExecuTorch's quantized kernels (int8 embeddings, weight dequantisation) with the runtime."""
    import executorch.kernels.quantized  # noqa: F401
