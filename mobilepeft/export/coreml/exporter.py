"""``mobilepeft export coreml``: a merged MobileVLM as two Core ML packages an iOS app drives.

* ``VisionEncoder.mlpackage``: ``pixel_values [1,3,S,S]`` (normalised, manifest
  ``image_preprocessing``) -> ``image_embeds [1,P,D]`` (CLIP tower + LDP projector). Static
  shapes, so Core ML can place it on the Neural Engine.
* ``TextDecoder.mlpackage``: ``(input_ids [1,T] int32, image_embeds [1,P,D], cache_position [T]
  int32) -> logits [1,T,V]``. The token embedding is *inside* the decoder: a position whose id is
  ``IMAGE_TOKEN_INDEX`` (-200) takes the next image token, every other position its token's
  embedding row — the layout the ONNX training graph uses, so one prompt builder serves both. Pass
  the whole prompt (image span included) in one prefill call, then one token per call;
  ``cache_position`` holds consecutive positions (the cache is written as one slice starting at
  ``cache_position[0]``).

  The KV cache: ``--target iOS18`` keeps it inside the model as Core ML state (``ct.StateType``;
  Swift ``model.makeState()`` + ``prediction(from:using:)``), written in place. ``--target iOS17``
  has no state: the caches are inputs ``k_cache``/``v_cache`` ``[L,1,H,S,Dh]`` and come back
  updated as ``k_cache_out``/``v_cache_out`` — feed them back each call (each call copies them).

Compute precision is fp16 (the Neural Engine's only precision); float inputs and outputs are
float16. ``--compress`` shrinks the weights after conversion (coremltools.optimize.coreml):
``int8`` per-channel (iOS 16+), ``int4`` symmetric blocks of 32 (iOS 18), ``palettize4`` 16-entry
k-means lookup tables per group of 16 channels (iOS 18). Weights under 2048 elements (norms,
biases) stay fp16.

Core ML predicts only on Apple hardware, so the export checks what it can here: the exported
graphs handed to the converter reproduce the PyTorch model (fp32 logits, prefill and then decode
steps through the KV cache) and the saved packages declare exactly the inputs, outputs and
states the manifest states. :mod:`mobilepeft.export.coreml.inspect` reads the packages back.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import base_manifest, write_manifest
from mobilepeft.export.coreml.inspect import package_bytes, package_io
from mobilepeft.export.graphs.kv_decoder import StaticCacheDecoder
from mobilepeft.export.graphs.source_model import Probe, load_merged, probe_inputs, resolve_max_seq_len
from mobilepeft.export.graphs.vision import VisionEncoder, embed_with_image
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.quiet import quiet_coremltools
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM
from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX
from mobilepeft.outputs import atomic_output

COMPRESSIONS = ("none", "int8", "int4", "palettize4")
TARGETS = ("iOS17", "iOS18")
NEEDS_IOS18 = ("int4", "palettize4")
VISION_FILE = "VisionEncoder.mlpackage"
DECODER_FILE = "TextDecoder.mlpackage"
BLOCK_SIZE = 32
PALETTE_GROUP = 16
# fp32 exported graphs vs the model: the same kernels in another order (measured ~1e-6).
PARITY_RTOL = 1e-4
CHECK_STEPS = 4


class CoreMLTextDecoder(nn.Module):
    """The converted decoder: token embedding + image splice + static-cache decoder.

    ``stateful``: the caches are the decoder's buffers (Core ML state); otherwise they are the
    ``k_cache``/``v_cache`` inputs ``[L,1,H,S,Dh]`` and the updated ones are returned.
    """

    def __init__(self, model: MobileVLMForCausalLM, max_seq_len: int, *, stateful: bool) -> None:
        super().__init__()
        self.decoder = StaticCacheDecoder(model, max_seq_len, contiguous_writes=True, fused_attention=True)
        self.embedding = model.llm.get_input_embeddings().weight
        self.stateful = stateful

    def forward(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, cache_position: torch.Tensor,
                k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None):
        embeds = embed_with_image(self.embedding, input_ids, image_embeds)
        if self.stateful:
            return self.decoder(embeds, cache_position)
        caches = [(k_cache[i], v_cache[i]) for i in range(k_cache.shape[0])]
        logits, caches = self.decoder.decode(embeds, cache_position, caches, in_place=False)
        return logits, torch.stack([k for k, _ in caches]), torch.stack([v for _, v in caches])


def export_coreml(model_dir: str | Path, out_dir: str | Path, *, adapter_dir: str | Path | None = None,
                  compress: str = "none", max_seq_len: int | None = None, target: str = "iOS18",
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the bundle ``out_dir`` (two ``.mlpackage``, tokenizer, ``manifest.json``); return the manifest."""
    if compress not in COMPRESSIONS:
        raise UserError(f"unknown compression {compress!r}", field="compress", hint=f"choose from {', '.join(COMPRESSIONS)}")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}", field="target", hint=f"choose from {', '.join(TARGETS)}")
    if compress in NEEDS_IOS18 and target != "iOS18":
        raise UserError(f"--compress {compress} needs iOS 18 (Core ML's per-block/grouped weight formats)",
                        field="compress", hint="use --target iOS18, or --compress int8 for iOS 17")
    model_dir = Path(model_dir)
    model = load_merged(model_dir, adapter_dir, echo)
    max_seq_len = resolve_max_seq_len(model, max_seq_len)
    stateful = target == "iOS18"
    echo(f"[2/3] exporting to Core ML ({target}, fp16, {'stateful' if stateful else 'stateless'} KV cache, "
         f"compression {compress}, max_seq_len {max_seq_len})")
    vision, decoder = exported_programs(model, max_seq_len, stateful=stateful)
    gap = decoder_parity(model, vision.module(), decoder.module(), probe_inputs(model),
                         cache_shape=None if stateful else cache_shape(model, max_seq_len), steps=CHECK_STEPS)
    echo(f"      exported graphs vs PyTorch: logits rel. diff {gap:.1e} over prefill + {CHECK_STEPS} decode steps "
         f"(tolerance {PARITY_RTOL:.0e})")
    if not gap <= PARITY_RTOL:
        raise UserError(f"the export-friendly decoder disagrees with the model (logits rel. diff {gap:.1e}); "
                        "no bundle was written", hint="report the model config")
    signature = package_signatures(model, max_seq_len, stateful=stateful)
    base = base_manifest(model, model_dir, max_seq_len)
    tokenizer = model.tokenizer
    del model
    with atomic_output(out_dir, "bundle") as tmp:
        sizes = {}
        for name, file, program in (("vision_encoder", VISION_FILE, vision), ("text_decoder", DECODER_FILE, decoder)):
            echo(f"      converting {file}")
            package = compress_weights(convert(program, signature[name], target), compress)
            package.save(str(tmp / file))
            sizes[name] = package_bytes(tmp / file)
        del vision, decoder
        echo("[3/3] checking the saved packages against the manifest")
        for name, file in (("vision_encoder", VISION_FILE), ("text_decoder", DECODER_FILE)):
            found, declared = package_io(tmp / file), signature[name]
            if not io_agrees(found, declared):
                raise UserError(f"{file} declares {found}, the manifest would say {declared}; no bundle was written",
                                hint="report the coremltools version")
        tokenizer.save(tmp)
        section = {
            "target": target,
            "compute_precision": "float16",
            "compression": compress,
            "compression_detail": COMPRESSION_DETAIL[compress],
            "stateful_kv_cache": stateful,
            "vision_encoder": dict(file=VISION_FILE, **signature["vision_encoder"]),
            "text_decoder": dict(file=DECODER_FILE, **signature["text_decoder"]),
            "token_embedding": "inside text_decoder: input_ids equal to prompt.image_token_id take the next "
                               "image_embeds row, other ids their embedding row",
            "compute_units": {"vision_encoder": "all", "text_decoder": "cpuAndGPU"},
            "compute_units_reason": "the vision encoder has static shapes and can run on the Neural Engine; the "
                                    "decoder's flexible sequence length keeps the Neural Engine out (it needs "
                                    "fixed or enumerated shapes), so ask for CPU and GPU",
            "package_bytes": sizes,
            "parity_rel_diff": gap,
            "parity_checked_on": "exported_program",
            "source": {"model": str(model_dir), "adapter": None if adapter_dir is None else str(adapter_dir)},
        }
        manifest = write_manifest(tmp, dict(base, coreml=section))
    return manifest


COMPRESSION_DETAIL = {
    "none": "float16 weights",
    "int8": "int8 weights, symmetric, one scale per output channel (iOS 16+)",
    "int4": f"int4 weights, symmetric, one scale per block of {BLOCK_SIZE} input channels (iOS 18)",
    "palettize4": f"4-bit palette: 16-entry k-means lookup table per group of {PALETTE_GROUP} output channels (iOS 18)",
}


def exported_programs(model: MobileVLMForCausalLM, max_seq_len: int, *, stateful: bool):
    """``torch.export`` programs of the vision encoder and decoder, in the ATen dialect coremltools reads."""
    from torch.export import Dim, export

    size, hidden, tokens = model.config.image_size, model.config.hidden_size, model.config.num_image_tokens
    decoder = CoreMLTextDecoder(model, max_seq_len, stateful=stateful).eval()
    seq = Dim("seq", min=1, max=decoder.decoder.max_tokens_per_call)
    args = (torch.ones(1, 2, dtype=torch.int32), torch.zeros(1, tokens, hidden), torch.arange(2, dtype=torch.int32))
    dynamic: tuple = ({1: seq}, None, {0: seq})
    if not stateful:
        # Two tensors: one passed twice would be traced as aliased inputs.
        shape = cache_shape(model, max_seq_len)
        args, dynamic = args + (torch.zeros(shape), torch.zeros(shape)), dynamic + (None, None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vision = export(VisionEncoder(model, include_projector=True).eval(), (torch.zeros(1, 3, size, size),),
                        strict=False)
        text = export(decoder, args, dynamic_shapes=dynamic, strict=False)
        # coremltools reads the ATen dialect; decomposing also turns the cache buffers' in-place
        # writes into mutations, which the converter makes Core ML states.
        return vision.run_decompositions({}), text.run_decompositions({})


def cache_shape(model: MobileVLMForCausalLM, max_seq_len: int) -> tuple[int, ...]:
    """The stateless decoder's ``k_cache``/``v_cache``: ``[layers, 1, kv heads, max_seq_len, head dim]``."""
    cfg = model.llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return (cfg.num_hidden_layers, 1, cfg.num_key_value_heads, max_seq_len, head_dim)


def package_signatures(model: MobileVLMForCausalLM, max_seq_len: int, *, stateful: bool) -> dict[str, Any]:
    """Inputs, outputs and states of both packages as the manifest states them ("T": 1..max_seq_len-1)."""
    cfg = model.llm.config
    size, hidden, tokens = model.config.image_size, model.config.hidden_size, model.config.num_image_tokens
    cache = list(cache_shape(model, max_seq_len))
    layer_cache = cache[1:]

    def tensor(name: str, dtype: str, shape: list) -> dict[str, Any]:
        return {"name": name, "dtype": dtype, "shape": shape}

    decoder = {
        "inputs": [tensor("input_ids", "int32", [1, "T"]), tensor("image_embeds", "float16", [1, tokens, hidden]),
                   tensor("cache_position", "int32", ["T"])],
        "outputs": [tensor("logits", "float16", [1, "T", cfg.vocab_size])],
        "states": [],
        "max_tokens_per_call": max_seq_len - 1,
    }
    if stateful:
        decoder["states"] = [tensor(f"decoder_{kind}_cache_{i}", "float16", layer_cache)
                             for i in range(cfg.num_hidden_layers) for kind in ("k", "v")]
    else:
        decoder["inputs"] += [tensor("k_cache", "float16", cache), tensor("v_cache", "float16", cache)]
        decoder["outputs"] += [tensor("k_cache_out", "float16", cache), tensor("v_cache_out", "float16", cache)]
    return {
        "vision_encoder": {"inputs": [tensor("pixel_values", "float16", [1, 3, size, size])],
                           "outputs": [tensor("image_embeds", "float16", [1, tokens, hidden])], "states": []},
        "text_decoder": decoder,
    }


def convert(program, signature: dict[str, Any], target: str):
    """``ct.convert`` to an fp16 ML program with the signature's names and dtypes (not loaded: Linux)."""
    with warnings.catch_warnings(), quiet_coremltools():
        warnings.simplefilter("ignore")
        import coremltools as ct

        def tensor_type(spec: dict[str, Any]):
            return ct.TensorType(name=spec["name"], dtype=np.float16 if spec["dtype"] == "float16" else np.int32)

        return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                          compute_precision=ct.precision.FLOAT16, skip_model_load=True,
                          inputs=[tensor_type(t) for t in signature["inputs"]],
                          outputs=[tensor_type(t) for t in signature["outputs"]])


def compress_weights(package, compress: str):
    """Apply ``--compress`` to every weight of 2048+ elements (linear, embedding, conv)."""
    if compress == "none":
        return package
    with quiet_coremltools():
        import coremltools.optimize.coreml as cto

    if compress == "palettize4":
        config = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                                        group_size=PALETTE_GROUP)
        apply = cto.palettize_weights
    elif compress == "int4":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                             block_size=BLOCK_SIZE)
        apply = cto.linear_quantize_weights
    else:
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        apply = cto.linear_quantize_weights
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"), quiet_coremltools():
        # An all-zero block (e.g. a zero-initialised LoRA delta merged into nothing) has scale 0.
        warnings.simplefilter("ignore")
        return apply(package, cto.OptimizationConfig(global_config=config))


@torch.no_grad()
def decoder_parity(model: MobileVLMForCausalLM, vision: Callable, decoder: Callable, probe: Probe, *,
                   cache_shape: tuple[int, ...] | None, steps: int) -> float:
    """Largest relative logits difference between ``decoder`` (prefill, then ``steps`` greedy steps
    through its KV cache) and the model recomputing the whole sequence, at each step.

    ``cache_shape``: None for a stateful decoder; else the shape of the caches it takes and returns.
    """
    stateful = cache_shape is None
    image = vision(probe.pixels)
    slot = int((probe.ids == IMAGE_TOKEN_INDEX).nonzero()[0])
    num = image.shape[1]
    ids = torch.cat([probe.ids[:slot], torch.full((num,), IMAGE_TOKEN_INDEX), probe.ids[slot + 1:]])
    caches = () if stateful else (torch.zeros(cache_shape), torch.zeros(cache_shape))
    sequence, worst, position = probe.ids, 0.0, 0
    step_ids = ids
    for _ in range(steps + 1):
        positions = torch.arange(position, position + len(step_ids), dtype=torch.int32)
        out = decoder(step_ids[None].to(torch.int32), image, positions, *caches)
        logits = out if stateful else out[0]
        if not stateful:
            caches = (out[1], out[2])
        reference = model(sequence[None], pixel_values=probe.pixels).logits[:, -logits.shape[1]:]
        worst = max(worst, relative_error(logits.numpy(), reference.numpy()))
        token = logits[0, -1].argmax().reshape(1)
        position += len(step_ids)
        step_ids, sequence = token, torch.cat([sequence, token])
    return worst


def io_agrees(found: dict[str, Any], declared: dict[str, Any]) -> bool:
    """Names, dtypes and (where the package states one) shapes; "T" matches a flexible dimension."""
    for kind in ("inputs", "outputs", "states"):
        if [(t["name"], t["dtype"]) for t in found[kind]] != [(t["name"], t["dtype"]) for t in declared[kind]]:
            return False
        for got, want in zip(found[kind], declared[kind], strict=True):
            if got["shape"] is not None and got["shape"] != want["shape"]:
                return False
    return True
