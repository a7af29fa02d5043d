"""``mobilepeft export onnx-training``: ONNX Runtime on-device training artifacts for an adapter.

Pipeline (every step inside a temporary directory that replaces the bundle only when all
checks pass, so a failed export never leaves a half-written bundle):

1. lower the adapter (any method) to its exact PEFT LoRA form — the bundle's ``adapter/``;
2. export ``TextDecoderForTraining`` with the TorchScript exporter at opset 15 in training mode
   with constant folding off: weights keep their names (LoRA tensors can be marked trainable)
   and no ``CastLike`` or single-output ``LayerNormalization`` appears (no ORT gradient);
3. ``generate_artifacts`` in a scratch working directory (it drops temp files into the CWD),
   cross-entropy with ``ignore_index=-100`` on the flattened logits, AdamW or SGD with
   gradient-norm clipping;
4. export the frozen vision encoder as an ONNX inference model;
5. build ``selftest.npz`` from a real sample and require ORT's eval loss to equal the PyTorch
   model's loss (and the ONNX vision encoder to equal PyTorch's) before writing the manifest.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilepeft.adapters.files import adapter_key, read_adapter_spec
from mobilepeft.data.llava import Conversation, load_llava
from mobilepeft.data.template import spliced_length, tokenize_conversation
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import base_manifest, write_manifest
from mobilepeft.export.graphs.vision import VisionEncoder
from mobilepeft.export.native_output import native_output_captured, tail
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.ort.batch import encode_sample, stack_batch
from mobilepeft.export.ort.memory import recorded_estimate
from mobilepeft.export.ort.runtime import OrtTrainer, PrefixRunner, VisionRunner
from mobilepeft.export.ort.training_graph import (
    FLAT_LOGITS,
    HIDDEN_STATES,
    IMAGE_EMBEDS,
    LABELS,
    LOGITS,
    TEXT_INPUTS,
    DecoderPrefix,
    TextDecoderForTraining,
    differentiable_activations,
)
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM
from mobilepeft.models.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilepeft.outputs import atomic_output

OPSET = 15  # ORT 1.19.2 takes <= 21; at 15 LayerNorm is decomposed (its ORT gradient needs 3 outputs)
MAX_IR_VERSION = 10
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1e-4, "sgd": 1e-2}
MAX_GRAD_NORM = 1.0
SELFTEST_RTOL = 1e-4
ADAPTER_DIR = "adapter"
PREFIX_FILE = "decoder_prefix.onnx"
PREFIX_WEIGHTS = ("int8", "float32")
PROTOBUF_LIMIT = 2 * 1024**3  # one ONNX file's protobuf; larger weights go to external data


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def default_seq_len(num_image_tokens: int) -> int:
    """Room for the image tokens plus 96 text tokens, rounded up to a multiple of 64."""
    return round_up(num_image_tokens + 96, 64)


def export_onnx_training(
    model_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    seq_len: int | None = None,
    train_projector: bool = False,
    optimizer: str = "adamw",
    learning_rate: float | None = None,
    ort_format: bool = False,
    sample_data: str | Path | None = None,
    image_folder: str | Path | None = None,
    train_layers: int | None = None,
    prefix_weights: str = "int8",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the bundle ``out_dir`` and return its manifest (see the module docstring).

    ``train_layers``: train the adapter in the top that many decoder layers only; the layers below
    (their adapter included) become ``decoder_prefix.onnx``, an inference model the app runs once per
    sample, stored with ``prefix_weights`` (``int8`` or ``float32``). None: the whole decoder trains.
    """
    from mobilepeft.loading import load_vlm
    from mobilepeft.merge import lower_adapter

    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}", field="optimizer", hint="adamw or sgd")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise UserError(f"learning rate must be positive, got {learning_rate}", field="lr")
    if prefix_weights not in PREFIX_WEIGHTS:
        raise UserError(f"unknown prefix weights {prefix_weights!r}", field="prefix-weights",
                        hint=" or ".join(PREFIX_WEIGHTS))
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    with atomic_output(out_dir, "bundle") as tmp, tempfile.TemporaryDirectory(prefix="mobilepeft-onnx-") as scratch_name:
        scratch = Path(scratch_name)
        echo("[1/5] lowering the adapter to LoRA")
        lower_adapter(adapter_dir, tmp / ADAPTER_DIR, model_dir)
        model = load_vlm(model_dir, adapter=tmp / ADAPTER_DIR)
        num_image_tokens = model.config.num_image_tokens
        frozen_layers = _frozen_layers(model, train_layers, train_projector)
        conv, folder = _selftest_sample(sample_data, image_folder, scratch)
        if seq_len is None:  # room for the self-test sample too, whatever the tokenizer makes of it
            ids, _ = tokenize_conversation(conv.turns[:1], model.tokenizer, num_image_tokens=num_image_tokens)
            seq_len = max(default_seq_len(num_image_tokens), round_up(spliced_length(ids, num_image_tokens), 64))
        if seq_len <= num_image_tokens:
            raise UserError(f"--seq-len {seq_len} leaves no room for text after {num_image_tokens} image tokens",
                            field="seq-len", hint=f"use at least {default_seq_len(num_image_tokens)}")

        echo(f"[2/5] exporting the text decoder (seq_len {seq_len}, opset {OPSET})")
        decoder = TextDecoderForTraining(model, train_projector=train_projector, frozen_layers=frozen_layers)
        trainable = _mark_trainable(model, train_projector, frozen_layers)
        row = encode_sample(conv, model.tokenizer, num_image_tokens=num_image_tokens, seq_len=seq_len,
                            pad_id=model.tokenizer.pad_id)
        pixel_values = _pixel_values(model, conv, folder)
        vision = VisionEncoder(model, include_projector=not train_projector).eval()
        with torch.no_grad():
            image_input = vision(pixel_values).numpy() if pixel_values is not None else None
        if image_input is None:
            image_input = np.zeros((1, *_image_input_shape(model, train_projector)), dtype=np.float32)
        batch = stack_batch([row], decoder.image_input, image_input)
        prefix = DecoderPrefix(model, frozen_layers).eval() if frozen_layers else None
        if prefix is not None:
            prefix_batch = batch
            with torch.no_grad():
                hidden = prefix(*(torch.from_numpy(batch[n]) for n in (*TEXT_INPUTS, IMAGE_EMBEDS))).numpy()
            batch = {HIDDEN_STATES: hidden, "attention_mask": batch["attention_mask"], LABELS: batch[LABELS]}
        graph, artifact_source = _export_decoder(decoder, batch, scratch / "decoder.onnx")
        in_graph = {i.name for i in graph.graph.initializer}
        frozen = [n for n, _ in decoder.named_parameters() if n not in trainable and n in in_graph]

        echo(f"[3/5] generating ORT training artifacts ({optimizer}, {len(trainable)} trainable tensors)")
        _generate_artifacts(graph, artifact_source, trainable, frozen, optimizer, tmp, scratch, ort_format)

        echo("[4/5] exporting the vision encoder" + (f" and the frozen layers 0-{frozen_layers - 1} ({prefix_weights})"
                                                     if prefix is not None else ""))
        vision_file = tmp / "vision_encoder.onnx"
        _export_vision(vision, model, vision_file)
        split = None
        if prefix is not None:
            split = _export_prefix(prefix, prefix_batch, hidden, tmp / PREFIX_FILE, scratch, prefix_weights)

        echo("[5/5] self-test: ORT vs PyTorch on a real sample")
        reference = _pytorch_loss(model, conv, pixel_values, seq_len)
        np.savez(tmp / "selftest.npz", **batch, reference_loss=np.float64(reference))
        trainer = OrtTrainer(tmp / "training_model.onnx", tmp / "eval_model.onnx", tmp / "optimizer_model.onnx",
                             tmp / "checkpoint")
        ort_loss = trainer.eval_loss(batch)
        if relative_error(ort_loss, reference) > SELFTEST_RTOL:
            raise RuntimeError(f"ORT eval loss {ort_loss:.6f} != PyTorch loss {reference:.6f}: exporter bug")
        if pixel_values is not None:
            onnx_image = VisionRunner(vision_file).encode(pixel_values.numpy())
            if relative_error(onnx_image, image_input) > SELFTEST_RTOL:
                raise RuntimeError("ONNX vision encoder differs from PyTorch: exporter bug")
        echo(f"      PyTorch loss {reference:.6f}, ORT eval loss {ort_loss:.6f} "
             f"(rel. diff {relative_error(ort_loss, reference):.1e})")

        model.tokenizer.save(tmp)
        manifest = _manifest(model, model_dir, decoder, trainable, frozen, seq_len, optimizer,
                             learning_rate or DEFAULT_LR[optimizer], train_projector, reference, ort_format,
                             trainer.loss_output, read_adapter_spec(tmp / ADAPTER_DIR)[0].dropout, split)
        section = manifest["onnx_training"]
        section["memory_estimate_mib"] = recorded_estimate(tmp, section, seq_len, manifest["model"]["vocab_size"])
        manifest = write_manifest(tmp, manifest)
    return manifest


def _selftest_sample(sample_data: str | Path | None, image_folder: str | Path | None,
                     scratch: Path) -> tuple[Conversation, Path]:
    """The first sample of ``sample_data``, or one sample of the built-in synthetic dataset."""
    if sample_data is None:
        from mobilepeft.data.synth import write_synthetic_dataset

        info = write_synthetic_dataset(scratch / "sample", n_train=1, n_val=0, seed=0)
        sample_data, image_folder = info["train_json"], info["image_folder"]
    folder = Path(image_folder) if image_folder is not None else Path(sample_data).parent
    conversations, _ = load_llava(sample_data, folder)
    if not conversations:
        raise UserError("no samples in the self-test data", path=sample_data)
    return conversations[0], folder


def _frozen_layers(model: MobileVLMForCausalLM, train_layers: int | None, train_projector: bool) -> int:
    """How many decoder layers go to the frozen prefix for ``--train-layers`` (0: none, the whole decoder trains)."""
    total = len(model.llm.model.layers)
    if train_layers is None or train_layers == total:
        return 0
    if not 1 <= train_layers <= total:
        raise UserError(f"--train-layers {train_layers}: the model has {total} decoder layers", field="train-layers",
                        hint=f"pass 1 to {total}")
    if train_projector:
        raise UserError("--train-projector needs the whole decoder in the training graph (the projector runs "
                        "before the frozen layers)", field="train-layers", hint="drop --train-layers or --train-projector")
    return total - train_layers


def _mark_trainable(model: MobileVLMForCausalLM, train_projector: bool, frozen_layers: int = 0) -> list[str]:
    """Parameter names (as the decoder module names them) that ORT trains; everything else frozen.
    The adapter of the first ``frozen_layers`` decoder layers stays as exported (it is in the prefix)."""
    from mobilepeft.adapters.inject import adapter_parameters

    model.requires_grad_(False)
    below = tuple(f"llm.model.layers.{i}." for i in range(frozen_layers))
    lora = {n for n, _ in adapter_parameters(model).items() if n.startswith("llm.") and not n.startswith(below)}
    for name, param in model.named_parameters():
        param.requires_grad_(name in lora or (train_projector and name.startswith("mm_projector.")))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _pixel_values(model: MobileVLMForCausalLM, conv: Conversation, folder: Path) -> torch.Tensor | None:
    if conv.image is None:
        return None
    from PIL import Image

    with Image.open(folder / conv.image) as image:
        return model.preprocess_images([image])


def _image_input_shape(model: MobileVLMForCausalLM, train_projector: bool) -> tuple[int, int]:
    cfg = model.config
    if train_projector:
        return cfg.grid_size * cfg.grid_size, cfg.mm_hidden_size
    return cfg.num_image_tokens, cfg.hidden_size


@contextlib.contextmanager
def _quiet_export():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_decoder(decoder: TextDecoderForTraining, batch: dict[str, np.ndarray], file: Path) -> tuple[Any, Any]:
    """The decoder's ONNX graph (weights not loaded) and what ``generate_artifacts`` should take:
    that graph, or for a decoder over 2 GB the path of a file whose weights are external data."""
    import onnx

    names = list(decoder.inputs)
    args = tuple(torch.from_numpy(batch[n]) for n in names)
    dynamic = {n: {0: "batch"} if n == decoder.image_input else {0: "batch", 1: "seq"} for n in names}
    with _quiet_export(), differentiable_activations(decoder):
        torch.onnx.export(decoder, args, str(file), dynamo=False, opset_version=OPSET, export_params=True,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=names, output_names=[LOGITS, FLAT_LOGITS], dynamic_axes=dynamic)
    # Weights stay where the exporter put them: inside the file, or beside it as external data
    # when the decoder is over protobuf's 2 GB (the exporter switches by itself).
    model = onnx.load(str(file), load_external_data=False)
    _check_trainable_graph(model, file)
    _compact_value_names(model)
    if not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        return model, model
    # generate_artifacts takes a >2 GB model only as a path; same folder keeps the data references valid.
    compact = file.with_name("decoder-compact.onnx")
    onnx.save(model, str(compact))
    return model, str(compact)


def _compact_value_names(model) -> None:
    """Rename intermediate tensors ``t0, t1, ...`` and drop source-line doc strings.

    The TorchScript exporter names every intermediate by its module scope
    (``/llm/model/layers.0/self_attn/q_proj/lora_A/MatMul_output_0``); those names were half of
    the graph files, which the phone downloads. Inputs, outputs and weights keep their names
    (the app and the checkpoint use them); node names stay too, so ORT errors still say where.
    """
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    renamed: dict[str, str] = {}
    for node in graph.node:
        node.doc_string = ""
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name and name not in keep:
                    names[i] = renamed.setdefault(name, f"t{len(renamed)}")
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)


def _check_trainable_graph(model, file: Path) -> None:
    """Fail loudly on what ORT 1.19.2 cannot train (docs/on-device-training.md), instead of at artifact time."""
    if model.ir_version > MAX_IR_VERSION:
        raise RuntimeError(f"{file}: IR version {model.ir_version} > {MAX_IR_VERSION} (pin onnx<1.18)")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > 21:
        raise RuntimeError(f"{file}: opset {opset} > 21, which ORT 1.19.2 cannot run")
    no_grad = {"CastLike"} & {n.op_type for n in model.graph.node}
    if no_grad:
        raise RuntimeError(f"{file}: ops without an ORT gradient builder: {sorted(no_grad)}")


def _generate_artifacts(graph, source, trainable: list[str], frozen: list[str], optimizer: str, out: Path,
                        scratch: Path, ort_format: bool) -> None:
    from onnxruntime.training import artifacts, onnxblock

    initializers = {i.name for i in graph.graph.initializer}
    missing = [n for n in trainable if n not in initializers]
    if missing:
        raise RuntimeError(f"trainable tensors lost their names in the ONNX graph: {missing[:3]}")
    clip = onnxblock.optim.ClipGradNorm(MAX_GRAD_NORM)
    optim = onnxblock.optim.AdamW(clip_grad=clip) if optimizer == "adamw" else onnxblock.optim.SGD(clip_grad=clip)
    # ORT's .ort converter prints each file it converts: keep stdout for our own progress lines.
    with (contextlib.chdir(scratch), _quiet_export(), native_output_captured(2) as log,
          contextlib.redirect_stdout(io.StringIO())):
        try:
            artifacts.generate_artifacts(
                source,
                requires_grad=trainable,
                frozen_params=[n for n in frozen if n in initializers],
                loss=onnxblock.loss.CrossEntropyLoss(ignore_index=IGNORE_INDEX),
                optimizer=optim,
                artifact_directory=str(out),
                nominal_checkpoint=True,
                loss_input_names=[FLAT_LOGITS],
                ort_format=ort_format,
            )
        except Exception as exc:
            log_tail = tail(log)
            if not log_tail:
                raise
            raise RuntimeError(f"ORT artifact generation failed ({exc}); its log ends with:\n"
                               + "\n".join(log_tail)) from exc
    for leftover in out.glob("*.required_operators*"):
        leftover.unlink()


def _export_vision(vision: VisionEncoder, model: MobileVLMForCausalLM, file: Path) -> None:
    size = model.config.image_size
    example = torch.zeros(1, 3, size, size)
    with _quiet_export():
        torch.onnx.export(vision, (example,), str(file), dynamo=False, opset_version=OPSET,
                          input_names=["pixel_values"], output_names=["image_tokens"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_tokens": {0: "batch"}})


def _export_prefix(prefix: DecoderPrefix, batch: dict[str, np.ndarray], hidden: np.ndarray, file: Path,
                   scratch: Path, weights: str) -> dict[str, Any]:
    """``decoder_prefix.onnx`` (weights int8 by ORT's dynamic quantization, or float32; over protobuf's
    2 GB in ``decoder_prefix.onnx.data``) and the manifest's ``split`` section, with how far its output
    is from PyTorch's on the self-test batch."""
    import onnx

    names = [*TEXT_INPUTS, IMAGE_EMBEDS]
    args = tuple(torch.from_numpy(batch[n]) for n in names)
    raw = scratch / "prefix-fp32" / "prefix.onnx"
    raw.parent.mkdir()
    with _quiet_export():
        torch.onnx.export(prefix, args, str(raw), dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=[HIDDEN_STATES],
                          dynamic_axes={n: {0: "batch", 1: "seq"} if n != IMAGE_EMBEDS else {0: "batch"} for n in names}
                          | {HIDDEN_STATES: {0: "batch", 1: "seq"}})
    # The float32 export as written (with its external data when the exporter needed it): over the
    # limit, the final file keeps its weights beside it too (int8 included, whose embedding stays fp32).
    external = sum(f.stat().st_size for f in raw.parent.iterdir()) > 0.9 * PROTOBUF_LIMIT
    if weights == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with native_output_captured(2), contextlib.redirect_stdout(io.StringIO()), _quiet_export():
            quantize_dynamic(str(raw), str(file), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True, use_external_data_format=external)
    else:
        model = onnx.load(str(raw))
        onnx.save(model, str(file), save_as_external_data=external, all_tensors_to_one_file=True,
                  location=file.name + ".data")
    onnx_hidden = PrefixRunner(file).hidden_states(batch)
    error = relative_error(onnx_hidden, hidden)
    if weights == "float32" and error > SELFTEST_RTOL:
        raise RuntimeError(f"ONNX decoder prefix differs from PyTorch (rel. {error:.1e}): exporter bug")
    return {"frozen_layers": prefix.frozen_layers, "weights": weights, "file": file.name,
            "data_file": file.name + ".data" if external else None,
            "inputs": [{"name": n, "dtype": str(batch[n].dtype)} for n in names],
            "output": {"name": HIDDEN_STATES, "dtype": "float32", "shape": ["batch", "seq", hidden.shape[-1]]},
            "selftest_rel_error": error}


def _pytorch_loss(model: MobileVLMForCausalLM, conv: Conversation, pixel_values: torch.Tensor | None,
                  seq_len: int) -> float:
    """The loss of the original model's own forward (image splicing and all), the self-test's reference."""
    ids, labels = tokenize_conversation(conv.turns, model.tokenizer, num_image_tokens=model.config.num_image_tokens,
                                        max_length=seq_len)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), pixel_values=pixel_values, labels=torch.tensor([labels]))
    return float(out.loss)


def _manifest(model: MobileVLMForCausalLM, model_dir: Path, decoder: TextDecoderForTraining, trainable: list[str],
              frozen: list[str], seq_len: int, optimizer: str, lr: float,
              train_projector: bool, reference: float, ort_format: bool, loss_output: str,
              lora_dropout: float, split: dict[str, Any] | None) -> dict[str, Any]:
    import onnxruntime

    cfg = model.config
    params = dict(decoder.named_parameters())
    image_shape = ["batch", *_image_input_shape(model, train_projector)]
    image_desc = ("CLIP features (vision_encoder output); the projector trains on device" if train_projector
                  else "projected image tokens (vision_encoder output)")
    section: dict[str, Any] = {
        "runtime": f"onnxruntime-training {onnxruntime.__version__}",
        "opset": OPSET,
        "training_model": "training_model.onnx",
        "eval_model": "eval_model.onnx",
        "optimizer_model": "optimizer_model.onnx",
        "checkpoint": "checkpoint",
        "nominal_checkpoint": "nominal_checkpoint",
        "vision_encoder": {
            "file": "vision_encoder.onnx",
            "input": {"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, cfg.image_size, cfg.image_size]},
            "output": {"name": "image_tokens", "dtype": "float32", "shape": image_shape},
        },
        "adapter_dir": ADAPTER_DIR,
        "selftest": {"file": "selftest.npz", "loss": reference, "rtol": SELFTEST_RTOL},
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", seq_len],
             "description": f"template ids, right-padded with pad_id; an image fills {cfg.num_image_tokens} "
                            f"consecutive positions holding {IMAGE_TOKEN_INDEX}"},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", seq_len],
             "description": "1 for real tokens (image positions included), 0 for padding"},
            {"name": decoder.image_input, "dtype": "float32", "shape": image_shape,
             "description": f"{image_desc}; zeros for a row without an image"},
        ],
        "label": {"name": LABELS, "dtype": "int64", "shape": [f"batch*{seq_len}"],
                  "description": "labels[b*seq_len+t] = token position t must predict (the next one), "
                                 f"{IGNORE_INDEX} where unsupervised (prompt, image, padding, last position)"},
        "ignore_index": IGNORE_INDEX,
        "loss_output": loss_output,
        "inference_outputs": [LOGITS],
        "image_input": decoder.image_input,
        "trainable": [{"name": n, "shape": list(params[n].shape), "adapter_key": adapter_key(n)} for n in trainable],
        "frozen": {"count": len(frozen), "bytes": sum(params[n].numel() * params[n].element_size() for n in frozen)},
        "optimizer": {"type": optimizer, "default_learning_rate": lr, "max_grad_norm": MAX_GRAD_NORM},
        "train_projector": train_projector,
        "lora_dropout": lora_dropout,
    }
    if split is not None:
        hidden = ["batch", seq_len, cfg.hidden_size]
        section["split"] = dict(
            split, train_layers=len(model.llm.model.layers) - split["frozen_layers"],
            num_hidden_layers=len(model.llm.model.layers), hidden_size=cfg.hidden_size,
            description="the sample inputs above feed `file` (the frozen layers, once per sample); the training "
                        "graph takes its output and the attention mask",
            graph_inputs=[{"name": HIDDEN_STATES, "dtype": "float32", "shape": hidden},
                          {"name": "attention_mask", "dtype": "int64", "shape": ["batch", seq_len]}])
    if ort_format:
        section["ort_format"] = {k: f"{k}.ort" for k in ("training_model", "eval_model", "optimizer_model")}
    return dict(base_manifest(model, model_dir, seq_len), onnx_training=section)

