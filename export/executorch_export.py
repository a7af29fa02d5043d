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

The export verifies itself before the bundle appears: the program, run by ExecuTorch's runtime,
must reproduce the PyTorch model's prefill logits on a real prompt + image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import base_manifest, write_manifest
from mobilepeft.export.kv_decoder import StaticCacheDecoder, TokenEmbedding
from mobilepeft.export.ort_runtime import relative_error
from mobilepeft.export.training_graph import VisionEncoder
from mobilepeft.io import atomic_dir, atomic_file
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM

BACKENDS = ("xnnpack", "portable")
PTE_FILE = "model.pte"
PARITY_RTOL = 1e-3  # XNNPACK reorders fp32 accumulations; measured ~1e-6


def export_executorch(model_dir: str | Path, out_dir: str | Path, *, adapter_dir: str | Path | None = None,
                      backend: str = "xnnpack", max_seq_len: int | None = None,
                      echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the bundle ``out_dir`` (``model.pte``, tokenizer, ``manifest.json``) and return the manifest."""
    from mobilepeft.adapters.inject import merge_and_unload
    from mobilepeft.loading import load_vlm

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}", field="backend", hint=f"choose from {', '.join(BACKENDS)}")
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
    with atomic_dir(out_dir) as tmp:
        echo(f"[2/3] exporting and lowering to ExecuTorch ({backend}, max_seq_len {max_seq_len})")
        program = _lower(model, max_seq_len, backend)
        with atomic_file(tmp / PTE_FILE, "wb") as fh:
            fh.write(program.buffer)
        echo("[3/3] self-test: ExecuTorch runtime vs PyTorch")
        gap = _check_prefill(model, tmp / PTE_FILE, max_seq_len)
        echo(f"      prefill logits rel. diff {gap:.1e}")
        model.tokenizer.save(tmp)
        section = {
            "file": PTE_FILE,
            "backend": backend,
            "quantization": "none",
            "dtype": "float32",
            "methods": {
                "vision_encoder": {"input": ["pixel_values", "float32", [1, 3, model.config.image_size,
                                                                         model.config.image_size]],
                                   "output": ["image_tokens", "float32", [1, model.config.num_image_tokens,
                                                                          model.config.hidden_size]]},
                "token_embedding": {"input": ["tokens", "int64", [1, "T"]],
                                    "output": ["embeddings", "float32", [1, "T", model.config.hidden_size]]},
                "text_decoder": {"input": ["embeddings", "float32", [1, "T", model.config.hidden_size],
                                           "cache_position", "int64", ["T"]],
                                 "output": ["logits", "float32", [1, "T", model.llm.config.vocab_size]]},
            },
            "image_input": "normalised float pixels, NCHW, as image_preprocessing describes (not uint8)",
            "source": {"model": str(model_dir), "adapter": None if adapter_dir is None else str(adapter_dir)},
            "parity_rel_diff": gap,
        }
        manifest = write_manifest(tmp, dict(base_manifest(model, model_dir, max_seq_len), executorch=section))
    return manifest


def _modules(model: MobileVLMForCausalLM, max_seq_len: int) -> dict[str, torch.nn.Module]:
    return {
        "vision_encoder": VisionEncoder(model, include_projector=True).eval(),
        "token_embedding": TokenEmbedding(model).eval(),
        "text_decoder": StaticCacheDecoder(model, max_seq_len).eval(),
    }


def _lower(model: MobileVLMForCausalLM, max_seq_len: int, backend: str):
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from torch.export import Dim, export

    modules = _modules(model, max_seq_len)
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
        return edge.to_executorch(ExecutorchBackendConfig())


def _check_prefill(model: MobileVLMForCausalLM, pte: Path, max_seq_len: int) -> float:
    """Prefill a real prompt + image through the program's three methods and compare logits."""
    from executorch.runtime import Runtime

    from mobilepeft.data.template import build_prompt_ids
    from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX

    ids = build_prompt_ids("<image>\nWhat is in the picture?", model.tokenizer)
    pixels = torch.zeros(1, 3, model.config.image_size, model.config.image_size).uniform_(-1.5, 1.5,
                                                                                         generator=torch.Generator().manual_seed(0))
    program = Runtime.get().load_program(str(pte))
    vision, embed, decoder = (program.load_method(n) for n in ("vision_encoder", "token_embedding", "text_decoder"))
    slot = ids.index(IMAGE_TOKEN_INDEX)
    embeds = torch.cat([embed.execute([torch.tensor([ids[:slot]])])[0], vision.execute([pixels])[0],
                        embed.execute([torch.tensor([ids[slot + 1:]])])[0]], dim=1)
    logits = decoder.execute([embeds, torch.arange(embeds.shape[1])])[0]
    with torch.no_grad():
        reference = model(torch.tensor([ids]), pixel_values=pixels).logits
    return relative_error(logits.numpy(), reference.numpy())
