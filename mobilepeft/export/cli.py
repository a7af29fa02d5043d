"""The deployment commands of the ``mobilepeft`` CLI, and the CLI's entry point.

The training-side commands live in :mod:`mobilepeft.cli`; this module adds ``export``,
``personalize``, ``bundle`` and ``adapter from-ort`` to the same typer app, so data flows one
way (``mobilepeft`` never imports ``mobilepeft.export``) while users see one command.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from mobilepeft.cli import Overwrite, adapter_app, app, claim_output
from mobilepeft.cli import main as _main
from mobilepeft.errors import UserError

export_app = typer.Typer(help="Export a model + adapter for phones (bundles described by manifest.json).",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
bundle_app = typer.Typer(help="Inspect and verify exported bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")

# Options the export commands share, declared once so their help reads the same everywhere.
BundleOut = Annotated[Path, typer.Option(help="Bundle directory to write (a new or empty one; a previous bundle with --overwrite).")]
InferenceModel = Annotated[Path, typer.Option(help="MobileVLM checkpoint directory (base or merged).")]
MergedAdapter = Annotated[Path | None, typer.Option(help="Adapter to merge first (any method).")]
KvCacheLength = Annotated[int | None, typer.Option(
    min=2, help="KV-cache length: prompt, image tokens and answer (default: the model's, at most 2048).")]


@export_app.command("onnx-training")
def export_onnx_training_cmd(
    model: Annotated[Path, typer.Option(help="Base MobileVLM checkpoint directory.")],
    adapter: Annotated[Path, typer.Option(help="Trained adapter directory (any method; lowered to LoRA).")],
    output_dir: BundleOut,
    seq_len: Annotated[int | None, typer.Option(min=2, help="Padded sequence length the app trains with, image tokens included (default: image tokens + 96, rounded up to 64).")] = None,
    train_projector: Annotated[bool, typer.Option("--train-projector/--no-train-projector", help="Train the LDP projector on device too (the graph then takes CLIP features).")] = False,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (both clip the gradient norm at 1).")] = "adamw",
    lr: Annotated[float | None, typer.Option(help="Default learning rate recorded for the app (default: 1e-4 adamw, 1e-2 sgd).")] = None,
    ort_format: Annotated[bool, typer.Option("--ort-format", help="Also write .ort copies of the graphs (smaller, faster to load on device).")] = False,
    sample_data: Annotated[Path | None, typer.Option(help="LLaVA JSON whose first sample becomes selftest.npz (default: a built-in synthetic sample).")] = None,
    image_folder: Annotated[Path | None, typer.Option(help="Image folder of --sample-data (default: its folder).")] = None,
    train_layers: Annotated[int | None, typer.Option(min=1, help="Train the adapter in the top N decoder layers only: the layers below become decoder_prefix.onnx, run once per sample, so a phone holds N layers in the training graph (default: all layers train). See docs/on-device-training.md.")] = None,
    prefix_weights: Annotated[str, typer.Option(help="Weights of decoder_prefix.onnx with --train-layers: int8 (ORT dynamic quantization, ~1/4 the memory) or float32.")] = "int8",
    overwrite: Overwrite = False,
) -> None:
    """Write ONNX Runtime on-device training artifacts: training/eval/optimizer graphs, checkpoint,
    nominal checkpoint, vision encoder, tokenizer, manifest.json and a self-test batch.

    The export checks itself: ORT's eval loss on the self-test batch must equal the PyTorch
    model's loss (rel. 1e-4) before the bundle appears. See docs/on-device-training.md.

    Example: mobilepeft export onnx-training --model ckpt/ --adapter runs/lora/adapter --output-dir bundles/ort
    """
    from mobilepeft.export.ort.exporter import export_onnx_training

    claim_output(output_dir, "bundle", overwrite, model, adapter, sample_data, image_folder)
    manifest = export_onnx_training(model, adapter, output_dir, seq_len=seq_len, train_projector=train_projector,
                                    optimizer=optimizer, learning_rate=lr, ort_format=ort_format,
                                    sample_data=sample_data, image_folder=image_folder, train_layers=train_layers,
                                    prefix_weights=prefix_weights, echo=typer.echo)
    sizes = {k: v["bytes"] for k, v in manifest["files"].items()}
    total = sum(sizes.values())
    typer.echo(f"wrote {output_dir}: {len(sizes)} files, {total / 1e6:.1f} MB "
               f"(checkpoint {sizes['checkpoint'] / 1e6:.1f} MB, "
               f"{len(manifest['onnx_training']['trainable'])} trainable tensors)")


@export_app.command("executorch")
def export_executorch_cmd(
    model: InferenceModel,
    output_dir: BundleOut,
    adapter: MergedAdapter = None,
    backend: Annotated[str, typer.Option(help="xnnpack (phone CPUs), coreml (Apple's Core ML delegate: iOS 18, fp16, runs on Apple hardware only) or portable (reference kernels).")] = "xnnpack",
    quantize: Annotated[str, typer.Option(help="none (fp32) or 8da4w: int4 weights in groups of 32 with int8 dynamic activations for the decoder's linears, int8 lm_head and embeddings, fp32 vision encoder.")] = "none",
    max_seq_len: KvCacheLength = None,
    adapter_as_data: Annotated[bool, typer.Option(
        "--adapter-as-data",
        help="Keep the LLM's adapter (any method, lowered to LoRA) unmerged, its tensors in adapter.ptd "
             "outside the .pte: an app replaces the file (e.g. after on-device personalization) and the runner "
             "swaps it without reloading the base. See docs/on-device-loop.md.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Lower the (merged) model to one ExecuTorch .pte with ExecuTorch's multimodal methods
    (vision_encoder, token_embedding, text_decoder + metadata), so ExecuTorch's own
    MultimodalRunner (C++, Python, Android LlmModule, iOS) drives it.

    The export checks itself: the program's prefill logits must match the PyTorch modules it was
    lowered from (for 8da4w, the quantized ones; the distance to the fp32 model is recorded).

    Example: mobilepeft export executorch --model ckpt/ --adapter runs/lora/adapter --quantize 8da4w --output-dir bundles/et
    """
    from mobilepeft.export.executorch.exporter import export_executorch

    claim_output(output_dir, "bundle", overwrite, model, adapter)
    manifest = export_executorch(model, output_dir, adapter_dir=adapter, backend=backend, quantize=quantize,
                                 max_seq_len=max_seq_len, adapter_as_data=adapter_as_data, echo=typer.echo)
    typer.echo(f"wrote {output_dir}: {manifest['files']['model.pte']['bytes'] / 1e6:.1f} MB model.pte")
    for method, counts in manifest["executorch"]["delegation"].items():
        typer.echo(f"      {method}: {counts['delegated_nodes']} nodes delegated to {backend} in "
                   f"{counts['delegated_subgraphs']} subgraph(s), {counts['non_delegated_nodes']} left to portable kernels")


@export_app.command("coreml")
def export_coreml_cmd(
    model: InferenceModel,
    output_dir: BundleOut,
    adapter: MergedAdapter = None,
    compress: Annotated[str, typer.Option(help="Weight compression: none (fp16), int8 (per channel, iOS 16+), int4 (blocks of 32, iOS 18) or palettize4 (4-bit k-means palettes, iOS 18).")] = "none",
    max_seq_len: KvCacheLength = None,
    target: Annotated[str, typer.Option(help="iOS18: KV cache as Core ML state (fast, in place); iOS17: caches as inputs/outputs the app feeds back.")] = "iOS18",
    overwrite: Overwrite = False,
) -> None:
    """Convert the (merged) model to VisionEncoder.mlpackage + TextDecoder.mlpackage (fp16, token
    embedding inside the decoder) for a native iOS app; the manifest states every input, output and
    state.

    Conversion runs anywhere; prediction needs Apple hardware. The export checks the graphs it
    converts against the PyTorch model (prefill and decode steps through the KV cache) and that the
    saved packages declare the manifest's interface. See docs/deploy-coreml.md.

    Example: mobilepeft export coreml --model ckpt/ --adapter runs/lora/adapter --compress int4 --output-dir bundles/coreml
    """
    from mobilepeft.export.coreml.exporter import export_coreml

    claim_output(output_dir, "bundle", overwrite, model, adapter)
    manifest = export_coreml(model, output_dir, adapter_dir=adapter, compress=compress, max_seq_len=max_seq_len,
                             target=target, echo=typer.echo)
    sizes = manifest["coreml"]["package_bytes"]
    typer.echo(f"wrote {output_dir}: VisionEncoder.mlpackage {sizes['vision_encoder'] / 1e6:.1f} MB, "
               f"TextDecoder.mlpackage {sizes['text_decoder'] / 1e6:.1f} MB ({compress}, {target})")


@app.command("generate")
def generate_cmd(
    bundle: Annotated[Path, typer.Option(help="Bundle from `mobilepeft export executorch`.")],
    prompt: Annotated[str, typer.Option(help="The question.")],
    image: Annotated[Path | None, typer.Option(help="Image the question is about.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer in tokens.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 for greedy decoding.")] = 0.0,
    adapter: Annotated[Path | None, typer.Option(help="Adapter file (.ptd) to answer with instead of the bundle's own (bundles exported with --adapter-as-data); checked against the manifest first.")] = None,
    verbose: Annotated[bool, typer.Option(help="Also print ExecuTorch's own log and runner stats (stderr).")] = False,
) -> None:
    """Answer a question about an image with ExecuTorch's MultimodalRunner — the path an app takes.

    Example: mobilepeft generate --bundle bundles/et --image cat.png --prompt "What is this?"
    """
    from mobilepeft.export.executorch.runner import BundleRunner

    if not math.isfinite(temperature):
        raise UserError(f"must be a finite number (got {temperature})", field="temperature")
    runner = BundleRunner(bundle, adapter=adapter)
    result = runner.generate(prompt, image, max_new_tokens=max_new_tokens, temperature=temperature)
    if verbose:
        typer.echo("\n".join(runner.native_log), err=True)
        typer.echo(result.stats_json, err=True)
    typer.echo(result.text)


@app.command("bench")
def bench_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle from `mobilepeft export executorch`.")],
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for ExecuTorch (and PyTorch with --compare).")] = 2,
    prompt_len: Annotated[int, typer.Option(min=1, help="Text tokens prefilled after the image tokens.")] = 32,
    gen_len: Annotated[int, typer.Option(min=1, help="Tokens decoded per run.")] = 32,
    runs: Annotated[int, typer.Option(min=1, help="Measured runs (after one warm-up run).")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result JSON here.")] = None,
    compare: Annotated[str | None, typer.Option(help="'eager': time PyTorch eager on the same inputs and threads and print ratios.")] = None,
    coreml: Annotated[bool, typer.Option("--coreml", help="Measure the Core ML packages of a bundle from `export coreml` (macOS only: Core ML predicts nowhere else).")] = False,
) -> None:
    """Load time, vision encode, prefill and decode speed, time to first token and peak RSS of an
    ExecuTorch bundle (or, with --coreml on a Mac, a Core ML bundle) on this machine: medians over
    runs with min/max, JSON keys as on Android/iOS.

    Example: mobilepeft bench bundles/et --threads 4 --compare eager --json bench.json
    """
    from mobilepeft.export.bench import METRICS, BenchSettings, bench_bundle
    from mobilepeft.io import write_json

    if compare not in (None, "eager"):
        raise UserError(f"unknown --compare {compare!r}", field="compare", hint="the only comparison is 'eager'")
    result = bench_bundle(bundle, BenchSettings(threads=threads, prompt_len=prompt_len, gen_len=gen_len, runs=runs),
                          compare_eager=compare == "eager", coreml=coreml, echo=lambda _: None)
    typer.echo(f"{'metric':<26}{'Core ML' if coreml else 'ExecuTorch':>14}" + (f"{'eager':>14}{'ratio':>10}" if compare else ""))
    for key in METRICS:
        line = f"{key:<26}{result[key]:>14.1f}"
        if compare:
            line += f"{result['eager'][key]:>14.1f}{result[key] / result['eager'][key]:>10.2f}"
        typer.echo(line)
    typer.echo(f"peak RSS {result['peak_rss_mb']:.0f} MiB, {result['threads']} threads, {result['backend']}, "
               f"{result['quantization']}, {result['prompt_tokens']} prompt + {result['generated_tokens']} generated tokens")
    if json_out is not None:
        write_json(json_out, result)


@app.command("personalize")
def personalize_cmd(
    bundle: Annotated[Path, typer.Option(help="Bundle from `mobilepeft export onnx-training`.")],
    data: Annotated[Path, typer.Option(help="The user's samples, LLaVA-format JSON.")],
    output_dir: Annotated[Path, typer.Option(help="Where the updated checkpoint, inference model and report go.")],
    image_folder: Annotated[Path | None, typer.Option(help="Folder the JSON's image paths are relative to (default: its folder).")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Held-out samples for the before/after loss (default: --data).")] = None,
    eval_image_folder: Annotated[Path | None, typer.Option(help="Image folder of --eval-data (default: its folder).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (trainStep + optimizerStep + lazyResetGrad).")] = 20,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the bundle's).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample order.")] = 0,
    checkpoint: Annotated[Path | None, typer.Option(help="Continue from this ORT checkpoint (e.g. an earlier OUT/checkpoint) instead of the bundle's.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="ORT intra-op threads (default: all cores).")] = None,
    executorch_bundle: Annotated[Path | None, typer.Option(help="Also write OUT/adapter.ptd for this ExecuTorch bundle (exported with --adapter-as-data), as the phone does after training.")] = None,
    memory_limit_mib: Annotated[float | None, typer.Option(min=1, help="Refuse before loading anything when the session's estimated peak RSS is above this, as a phone app does with the memory it may use (e.g. 3072).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Replay the phone's training loop with onnxruntime.training on the bundle's artifacts.

    Writes OUT/checkpoint (what the phone keeps), OUT/inference_model.onnx (trained weights baked
    in) and OUT/personalize.json; with --executorch-bundle also OUT/adapter.ptd, which that
    bundle's program swaps in without re-export. Turn the checkpoint back into an adapter with
    `mobilepeft adapter from-ort`.

    Example: mobilepeft personalize --bundle bundles/ort --data my.json --steps 20 --output-dir runs/me
    """
    from mobilepeft.export.ort.personalize import personalize

    claim_output(output_dir, "personalization", overwrite, bundle, data, image_folder, eval_data, eval_image_folder, checkpoint)
    report = personalize(bundle, data, output_dir, image_folder=image_folder, eval_data=eval_data,
                         eval_image_folder=eval_image_folder, steps=steps, lr=lr, batch_size=batch_size,
                         seed=seed, checkpoint=checkpoint, threads=threads, memory_limit_mib=memory_limit_mib,
                         echo=typer.echo)
    typer.echo(f"loss {report.eval_loss_before:.4f} -> {report.eval_loss_after:.4f}; "
               f"median step {report.train_step_ms_median:.1f} ms; wrote {output_dir}")
    if executorch_bundle is not None:
        from mobilepeft.export.to_ptd import tensors_from_ort, write_bundle_adapter

        path = write_bundle_adapter(executorch_bundle, tensors_from_ort(output_dir / "checkpoint", bundle, executorch_bundle),
                                    output_dir / "adapter.ptd")
        typer.echo(f"wrote {path}: the personalized adapter for {executorch_bundle}")


@adapter_app.command("from-ort")
def adapter_from_ort_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="ORT checkpoint saved on the device (or by `mobilepeft personalize`).")],
    bundle: Annotated[Path, typer.Option(help="The bundle the device trained with.")],
    output_dir: Annotated[Path, typer.Option(help="Where the PEFT LoRA adapter goes.")],
    overwrite: Overwrite = False,
) -> None:
    """Turn an on-device checkpoint back into a PEFT LoRA adapter (merge it, re-export it, load it in PEFT).

    Example: mobilepeft adapter from-ort runs/me/checkpoint --bundle bundles/ort --output-dir runs/me/adapter
    """
    from mobilepeft.export.ort.to_adapter import adapter_from_ort

    claim_output(output_dir, "adapter", overwrite, checkpoint, bundle)
    path = adapter_from_ort(checkpoint, bundle, output_dir)
    typer.echo(f"wrote PEFT LoRA adapter to {path}")


@adapter_app.command("to-ptd")
def adapter_to_ptd_cmd(
    bundle: Annotated[Path, typer.Option(help="ExecuTorch bundle exported with --adapter-as-data.")],
    output: Annotated[Path, typer.Option(help="The adapter file to write (.ptd); written atomically.")],
    ort_checkpoint: Annotated[Path | None, typer.Option(help="ORT checkpoint trained on the device (or by `mobilepeft personalize`).")] = None,
    ort_bundle: Annotated[Path | None, typer.Option(help="The ORT training bundle that checkpoint belongs to.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="Or: an adapter directory (any method; lowered to LoRA) with the bundle's targets and ranks.")] = None,
) -> None:
    """Write an adapter file the bundle's program reads in place of its own adapter.ptd: swap it in
    with `mobilepeft generate --adapter FILE` or the native runner, no re-export.

    Example: mobilepeft adapter to-ptd --bundle bundles/et --ort-checkpoint runs/me/checkpoint --ort-bundle bundles/ort --output me.ptd
    """
    from mobilepeft.export.to_ptd import tensors_from_adapter, tensors_from_ort, write_bundle_adapter

    if (adapter is None) == (ort_checkpoint is None) or (ort_checkpoint is None) != (ort_bundle is None):
        raise UserError("give either --ort-checkpoint with --ort-bundle, or --adapter", field="adapter")
    tensors = tensors_from_adapter(adapter) if adapter is not None else tensors_from_ort(ort_checkpoint, ort_bundle, bundle)
    path = write_bundle_adapter(bundle, tensors, output)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(tensors)} tensors)")


@bundle_app.command("check")
def bundle_check_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (ONNX Runtime training, ExecuTorch or Core ML).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Verify a bundle before it goes to a phone: the manifest against the schema, every file
    against its SHA-256, then each runtime section in its runtime (ORT: the self-test loss equals
    PyTorch's and a train step runs; ExecuTorch: every method runs with the manifest's shapes;
    Core ML: the packages declare the manifest's interface).

    Exit status 1 if a check fails, 2 if a file is missing, truncated or altered.
    """
    from mobilepeft.export.bundle_check import check_bundle

    _, checks = check_bundle(bundle)
    passed = all(c.passed for c in checks)
    if json_out:
        typer.echo(json.dumps({"passed": passed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            typer.echo(f"{c.section:<14}{'ok' if c.passed else 'FAIL':<6}{c.detail}")
        typer.echo("PASS" if passed else "FAIL")
    if not passed:
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    output_dir: Annotated[Path, typer.Option(help="Where the demo writes model, data, runs and bundles (scratch: rewritten each run).")] = Path("outputs/demo"),
    steps: Annotated[int, typer.Option(min=1, help="Desktop training steps.")] = 300,
    adapter: Annotated[str, typer.Option(help="Adapter method, as `mobilepeft train --adapter` (docs/methods.md).")] = "lora",
    schedule: Annotated[str | None, typer.Option(help="Rank schedule, as `mobilepeft train --schedule` (default: fixed).")] = None,
    runner: Annotated[Path | None, typer.Option(help="The native runner (`make runner`: build/runner/mobilepeft_runner) that answers with the swapped adapter; without it ExecuTorch's Python runtime answers, reloading to switch adapters.")] = None,
) -> None:
    """The whole loop on the embedded default: train a LoRA adapter (or --adapter's) on the tiny
    MobileVLM -> export the ONNX Runtime training bundle and the 8da4w ExecuTorch bundle (adapter
    as data) -> personalize with ORT on the user's own words -> write adapter.ptd from ORT's state
    -> answer held-out questions before and after a hot-swap. See docs/on-device-loop.md.

    Example: make demo   (or: mobilepeft demo --runner build/runner/mobilepeft_runner)
    """
    from mobilepeft.export.loop_demo import run_loop_demo

    run_loop_demo(output_dir, steps=steps, adapter=adapter, schedule=schedule, runner=runner, echo=typer.echo)


main = _main

if __name__ == "__main__":
    main()
