"""On-device training step: ONNX Runtime training (the phone's runtime) vs the same LoRA step in PyTorch.

Both run the identical computation on the same machine, threads and batch: the text decoder of
``mobilepeft export onnx-training`` (image tokens as input, LoRA on q/k/v/o/gate/up/down trainable,
everything else frozen), cross-entropy, gradient-norm clipping at 1, AdamW. ORT runs the bundle's
training/optimizer graphs through ``onnxruntime.training.api``; PyTorch runs
``TextDecoderForTraining`` eagerly. Shapes:

* ``tiny``: the embedded default model (all 4 layers);
* ``mobilellama-1.4b``: MobileLLaMA-1.4B's decoder dimensions (hidden 2048, MLP 5632, 16 heads,
  vocabulary 32000, 144 image tokens as MobileVLM V2 feeds it) with random weights, truncated to
  a few layers; the per-layer cost (difference between layer counts) extrapolates to all 24.

Also reported: the size of every artifact and the overhead of the training artifacts beyond the
frozen weights they must carry, against the LoRA tensor bytes. Timing interleaves the two
runtimes step by step (benchmarks/common.py); peak RSS comes from a fresh process per runtime.

    python benchmarks/ondevice_train.py                          # both shapes, 1 and 2 layers
    python benchmarks/ondevice_train.py --shapes tiny --steps 20

Prints a table and writes docs/results/ondevice_train.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS,
    current_rss_mib,
    environment,
    measure_memory_in_subprocess,
    peak_rss_mib,
    run_config,
    time_interleaved,
    write_result,
)

from mobilepeft.presets import PRESETS

MOBILELLAMA_1_4B = {
    # The real decoder of the mobilevlm-1.7b-shape preset (MobileLLaMA-1.4B, vocabulary 32000) ...
    "llm": dict(PRESETS["mobilevlm-1.7b-shape"]["llm"]),
    "vocab_size": PRESETS["mobilevlm-1.7b-shape"]["vocab_size"],
    # ... with a small CLIP of MobileVLM's 336/14 geometry: 24x24 patches -> 144 image tokens after LDPv2
    # (the vision tower is frozen and outside the training graph; its size only slows the export).
    "vision": dict(PRESETS["tiny"]["vision"], image_size=336, patch_size=14),
    "tokenizer_vocab": 512,
}
SHAPES = {"tiny": PRESETS["tiny"], "mobilellama-1.4b": MOBILELLAMA_1_4B}
FULL_LAYERS = {"tiny": 4, "mobilellama-1.4b": 24}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = ("ort", "pytorch")


def cases(args: argparse.Namespace) -> list[tuple[str, int]]:
    out = []
    for shape in args.shapes.split(","):
        layers = [FULL_LAYERS[shape]] if shape == "tiny" else [int(n) for n in args.layers.split(",")]
        out += [(shape, n) for n in layers]
    return out


def prepare_case(work: Path, shape: str, layers: int, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Checkpoint, LoRA adapter (random A and B, so every tensor gets a gradient) and bundle, cached in ``work``."""
    from mobilepeft.export.ort.exporter import export_onnx_training

    model_dir, adapter_dir = prepare_model(work, shape, layers, args.rank)
    bundle = work / f"{shape}-{layers}L" / f"bundle-s{args.seq_len or 0}"
    if not (bundle / "manifest.json").exists():
        export_onnx_training(model_dir, adapter_dir, bundle, seq_len=args.seq_len, echo=lambda _: None)
    return model_dir, adapter_dir, bundle


def prepare_model(work: Path, shape: str, layers: int, rank: int) -> tuple[Path, Path]:
    """Checkpoint and LoRA adapter (random A and B, so every tensor gets a gradient), cached in ``work``."""
    from mobilepeft.adapters.files import save_adapter
    from mobilepeft.adapters.inject import adapter_parameters, inject_adapters
    from mobilepeft.adapters.spec import AdapterSpec
    from mobilepeft.loading import load_vlm
    from mobilepeft.presets import write_model

    case = work / f"{shape}-{layers}L"
    model_dir, adapter_dir = case / "model", case / "adapter"
    if not (model_dir / "config.json").exists():
        spec = copy.deepcopy(SHAPES[shape])
        spec["llm"]["num_hidden_layers"] = layers
        write_model(spec, model_dir, seed=0)
    if not (adapter_dir / "adapter_config.json").exists():
        model = load_vlm(model_dir)
        spec = AdapterSpec(method="lora", rank=rank, alpha=2 * rank, dropout=0.0, target_modules=TARGETS)
        inject_adapters(model, spec)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in adapter_parameters(model).values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        save_adapter(model, spec, adapter_dir, base_model=str(model_dir), projector_trained=False)
        del model
    return model_dir, adapter_dir


def make_batch(bundle: Path, data_dir: Path, batch_size: int) -> dict[str, Any]:
    """The first ``batch_size`` synthetic samples, built from raw data as the phone builds them."""
    from mobilepeft.export.bundle import read_bundle
    from mobilepeft.export.ort.personalize import BatchBuilder

    builder = BatchBuilder(read_bundle(bundle))
    rows, folder = builder.samples(data_dir / "train.json", data_dir)
    return builder.batch(rows[:batch_size], folder)


def ort_step_fn(bundle: Path, threads: int, lr: float):
    from mobilepeft.export.bundle import read_bundle
    from mobilepeft.export.ort.personalize import open_trainer

    trainer = open_trainer(read_bundle(bundle), threads=threads)
    trainer.set_learning_rate(lr)
    return trainer.train_step


def pytorch_step_fn(model_dir: Path, adapter_dir: Path, image_input: str, lr: float):
    """The same step eagerly: decoder graph module, CE on flat logits, clip 1.0, AdamW (ORT's eps)."""
    from mobilepeft.adapters.inject import adapter_parameters
    from mobilepeft.export.ort.training_graph import TextDecoderForTraining
    from mobilepeft.loading import load_vlm

    model = load_vlm(model_dir, adapter=adapter_dir)
    model.requires_grad_(False)
    params = [p for n, p in adapter_parameters(model).items() if n.startswith("llm.")]
    for p in params:
        p.requires_grad_(True)
    decoder = TextDecoderForTraining(model, train_projector=False).train()
    optimizer = torch.optim.AdamW(params, lr=lr, eps=1e-6, weight_decay=0.0)

    def step(batch: dict[str, Any]) -> float:
        _, flat = decoder(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]),
                          torch.from_numpy(batch[image_input]))
        loss = torch.nn.functional.cross_entropy(flat, torch.from_numpy(batch["labels"]), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def build_variant(variant: str, model_dir: Path, adapter_dir: Path, bundle: Path, args: argparse.Namespace):
    if variant == "ort":
        return ort_step_fn(bundle, args.threads, args.lr)
    return pytorch_step_fn(model_dir, adapter_dir, "image_embeds", args.lr)


def memory_worker(args: argparse.Namespace) -> None:
    """Fresh process: build one runtime for one case, run warmup + steps, print RSS as JSON."""
    import json

    variant, shape, layers = args.memory_worker.split(":")
    model_dir, adapter_dir, bundle = prepare_case(args.work_dir, shape, int(layers), args)
    batch = make_batch(bundle, args.work_dir / "data", args.batch_size)
    step = build_variant(variant, model_dir, adapter_dir, bundle, args)
    before = current_rss_mib()
    for _ in range(args.warmup + args.steps):
        step(batch)
    peak = peak_rss_mib()
    print(json.dumps({"rss_before_train_mib": before, "peak_rss_mib": peak, "train_growth_mib": peak - before}))


def artifact_sizes(bundle: Path) -> dict[str, Any]:
    from mobilepeft.export.bundle import read_bundle

    manifest = read_bundle(bundle).manifest
    sec = manifest["onnx_training"]
    files = {k: v["bytes"] for k, v in manifest["files"].items()}
    training = [sec[k] for k in ("training_model", "eval_model", "optimizer_model", "checkpoint")]
    lora_bytes = sum(4 * torch.Size(e["shape"]).numel() for e in sec["trainable"])
    frozen = sec["frozen"]["bytes"]
    overhead = sum(files[f] for f in training) - frozen  # graphs, LoRA tensors, checkpoint framing
    on_disk = {str(f.relative_to(bundle)): f.stat().st_size for f in sorted(bundle.rglob("*")) if f.is_file()}
    return {"files": files, "on_disk": on_disk, "lora_bytes": lora_bytes, "frozen_bytes": frozen,
            "training_artifact_bytes": sum(files[f] for f in training),
            "overhead_beyond_frozen_bytes": overhead, "overhead_over_lora": overhead / lora_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="tiny,mobilellama-1.4b", help="comma separated: tiny, mobilellama-1.4b")
    ap.add_argument("--layers", default="1,2", help="decoder layer counts for the truncated 1.4B shape")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=0, help="padded length (0: the exporter's default)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per runtime")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads for both runtimes")
    ap.add_argument("--work-dir", type=Path, default=None, help="where models and bundles are built (default: temp)")
    ap.add_argument("--output", type=Path, default=RESULTS / "ondevice_train.json")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.seq_len = args.seq_len or None
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        return memory_worker(args)

    from mobilepeft.data.synth import write_synthetic_dataset

    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="ondevice-bench-")
    work = args.work_dir or Path(tmp.name)
    if not (work / "data" / "train.json").exists():
        write_synthetic_dataset(work / "data", n_train=16, n_val=0, seed=0)
    rows = []
    for shape, layers in cases(args):
        print(f"== {shape}, {layers} layer(s): building model, adapter, bundle", file=sys.stderr)
        model_dir, adapter_dir, bundle = prepare_case(work, shape, layers, args)
        batch = make_batch(bundle, work / "data", args.batch_size)
        steps = {v: build_variant(v, model_dir, adapter_dir, bundle, args) for v in VARIANTS}
        timing = time_interleaved({v: (lambda _i, f=steps[v], b=batch: f(b)) for v in VARIANTS}, args.steps,
                                  args.warmup)
        del steps
        memory = {v: measure_memory_in_subprocess(__file__, f"{v}:{shape}:{layers}", args, work) for v in VARIANTS}
        rows.append({
            "shape": shape, "layers": layers, "seq_len": int(batch["input_ids"].shape[1]),
            "train_step_ms": {v: 1000 * timing[v]["median_s"] for v in VARIANTS},
            "train_step_ms_min": {v: 1000 * timing[v]["min_s"] for v in VARIANTS},
            "ort_over_pytorch_time": timing["ort"]["median_s"] / timing["pytorch"]["median_s"],
            "train_peak_rss_mb": {v: memory[v]["peak_rss_mib"] for v in VARIANTS},
            "train_rss_growth_mb": {v: memory[v]["train_growth_mib"] for v in VARIANTS},
            "ort_over_pytorch_rss": memory["ort"]["peak_rss_mib"] / memory["pytorch"]["peak_rss_mib"],
            "losses": {v: timing[v]["values"] for v in VARIANTS},
            "sizes": artifact_sizes(bundle),
        })
    result = {"benchmark": "ondevice_train", "environment": environment(), "config": run_config(args),
              "rows": rows, "extrapolation": extrapolate(rows)}
    write_result(args.output, result)
    print_table(result)
    print(f"\nwrote {args.output}")


def extrapolate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-layer cost from the two smallest layer counts of the 1.4B shape, then the full 24 layers."""
    big = sorted((r for r in rows if r["shape"] == "mobilellama-1.4b"), key=lambda r: r["layers"])
    if len(big) < 2:
        return {}
    lo, hi = big[0], big[1]
    out: dict[str, Any] = {"full_layers": FULL_LAYERS["mobilellama-1.4b"]}
    for key in ("train_step_ms", "train_peak_rss_mb"):
        for v in VARIANTS:
            per_layer = (hi[key][v] - lo[key][v]) / (hi["layers"] - lo["layers"])
            rest = lo[key][v] - per_layer * lo["layers"]
            out[f"{key}_per_layer_{v}"] = per_layer
            out[f"{key}_full_{v}"] = rest + per_layer * out["full_layers"]
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'shape':<18}{'layers':>6}{'seq':>6}{'ORT ms':>10}{'PyTorch ms':>12}{'time ORT/PT':>12}"
          f"{'ORT MiB':>10}{'PT MiB':>9}{'LoRA MB':>9}{'ckpt MB':>9}{'overhead/LoRA':>15}")
    for r in result["rows"]:
        s = r["sizes"]
        print(f"{r['shape']:<18}{r['layers']:>6}{r['seq_len']:>6}{r['train_step_ms']['ort']:>10.1f}"
              f"{r['train_step_ms']['pytorch']:>12.1f}{r['ort_over_pytorch_time']:>12.3f}"
              f"{r['train_peak_rss_mb']['ort']:>10.0f}{r['train_peak_rss_mb']['pytorch']:>9.0f}"
              f"{s['lora_bytes'] / 1e6:>9.2f}{s['files']['checkpoint'] / 1e6:>9.1f}{s['overhead_over_lora']:>15.2f}")
    ex = result["extrapolation"]
    if ex:
        print(f"\nMobileLLaMA-1.4B, all {ex['full_layers']} layers (extrapolated): step "
              f"ORT {ex['train_step_ms_full_ort']:.0f} ms vs PyTorch {ex['train_step_ms_full_pytorch']:.0f} ms; "
              f"per layer ORT {ex['train_step_ms_per_layer_ort']:.0f} ms, PyTorch "
              f"{ex['train_step_ms_per_layer_pytorch']:.0f} ms; peak RSS ORT {ex['train_peak_rss_mb_full_ort']:.0f} MiB, "
              f"PyTorch {ex['train_peak_rss_mb_full_pytorch']:.0f} MiB")


if __name__ == "__main__":
    main()
