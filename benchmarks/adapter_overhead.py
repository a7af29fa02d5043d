"""What each adapter method costs: training step vs LoRA at equal trainable parameters, and
inference of the merged model vs the base model.

Training: lora, multihead, dmlora (rank --rank) and adaring (ring rank picked so its parameter
count is closest to LoRA's) train side by side on the same batches, interleaved step by step;
memory is measured in a fresh process per method (benchmarks/common.py). Inference: every
method's adapter is merged into the weights; a forward pass (one image + prompt, no grad) of each
merged model is timed interleaved with the base model. A merged model is plain linears again, so
its latency must match the base model's within noise (target ratio ≤ 1.02); the unmerged adapter
model is timed too, to show what merging saves.

    python benchmarks/adapter_overhead.py            # small preset, batch 8, rank 16

Prints one table and writes docs/results/adapter_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import (
    add_common_args,
    environment,
    make_batches,
    measure_memory_in_subprocess,
    memory_of_training,
    prepare,
    run_config,
    time_interleaved,
    train_step,
    write_result,
)

METHODS = ("lora", "multihead", "dmlora", "adaring")
INFERENCE_TARGET = 1.02


def spec_for(method: str, args: argparse.Namespace, ring_rank: int):
    from mobilepeft.adapters.spec import AdapterSpec

    return AdapterSpec.from_dict(dict(method=method, rank=args.rank, alpha=2.0 * args.rank, dropout=0.0,
                                      ring_rank=ring_rank))


def count_trainable(model_dir: Path, spec) -> int:
    """Adapter parameters of ``spec`` on this architecture (built on the meta device: no memory)."""
    from mobilepeft.adapters.inject import adapter_parameters, inject_adapters
    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.mobilevlm import MobileVLMForCausalLM

    with torch.device("meta"):
        model = MobileVLMForCausalLM(MobileVLMConfig.from_dir(model_dir))
        inject_adapters(model, spec)
    return sum(p.numel() for p in adapter_parameters(model).values())


def matching_ring_rank(model_dir: Path, args: argparse.Namespace) -> int:
    """The ring rank whose AdaRing parameter count is closest to LoRA's at --rank."""
    target = count_trainable(model_dir, spec_for("lora", args, 1))
    return min(range(1, 65), key=lambda r: abs(count_trainable(model_dir, spec_for("adaring", args, r)) - target))


def build(method: str, model_dir: Path, args: argparse.Namespace, ring_rank: int):
    from mobilepeft import load_vlm
    from mobilepeft.adapters.inject import adapter_parameters, inject_adapters

    torch.manual_seed(0)
    model = load_vlm(model_dir)
    model.requires_grad_(False)
    inject_adapters(model, spec_for(method, args, ring_rank))
    params = list(adapter_parameters(model).values())
    for p in params:
        p.requires_grad_(True)
    model.train()
    return model, torch.optim.AdamW(params, lr=args.lr)


def step_fn(model, optimizer, batches, total):
    from mobilepeft.adapters.inject import adapter_layers, set_progress

    layers = list(adapter_layers(model).values())

    def run(i: int) -> float:
        set_progress(layers, i, total)  # DMLoRA's branch dropout ramps up as in a real run
        return train_step(model, optimizer, batches[i])
    return run


def forward_fn(model, batch):
    def run(_: int) -> None:
        with torch.no_grad():
            model(batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "adapter_overhead.json", METHODS, steps=12, warmup=2)
    ap.add_argument("--rank", type=int, default=16, help="LoRA/multihead/dmlora rank (alpha = 2 x rank)")
    ap.add_argument("--inference-reps", type=int, default=40, help="timed forward passes per model")
    ap.add_argument("--ring-rank", type=int, default=0, help="adaring ring rank (default: LoRA's parameter count)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    total = args.warmup + args.steps

    if args.memory_worker:
        model_dir, data_dir = prepare(args.work_dir, args.preset)
        batches = make_batches(model_dir, data_dir, args.batch_size, total)
        model, opt = build(args.memory_worker, model_dir, args, args.ring_rank)
        print(json.dumps(memory_of_training(model, opt, batches)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        model_dir, data_dir = prepare(work, args.preset)
        args.ring_rank = ring_rank = args.ring_rank or matching_ring_rank(model_dir, args)
        counts = {m: count_trainable(model_dir, spec_for(m, args, ring_rank)) for m in METHODS}
        memory = {m: measure_memory_in_subprocess(__file__, m, args, work) for m in METHODS}

        batches = make_batches(model_dir, data_dir, args.batch_size, total)
        models = {m: build(m, model_dir, args, ring_rank) for m in METHODS}
        train = time_interleaved({m: step_fn(*models[m], batches, total) for m in METHODS},
                                 rounds=args.steps, warmup=args.warmup)

        from mobilepeft import load_vlm
        from mobilepeft.adapters.inject import merge_and_unload

        one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batches[0].items()}
        infer_models = {"base": load_vlm(model_dir)}
        for m in METHODS:
            adapted = models[m][0].eval()
            infer_models[f"{m} adapter"] = adapted
            infer_models[f"{m} merged"] = merge_and_unload(copy.deepcopy(adapted)).eval()
        infer = time_interleaved({name: forward_fn(model, one) for name, model in infer_models.items()},
                                 rounds=args.inference_reps, warmup=args.warmup)

    base_train, base_mem = train["lora"]["median_s"], memory["lora"]
    base_infer = infer["base"]["median_s"]
    rows = {}
    for m in METHODS:
        rows[m] = {
            "trainable_parameters": counts[m],
            "params_vs_lora": counts[m] / counts["lora"],
            "median_step_s": train[m]["median_s"],
            "step_time_vs_lora": train[m]["median_s"] / base_train,
            **memory[m],
            "peak_rss_vs_lora": memory[m]["peak_rss_mib"] / base_mem["peak_rss_mib"],
            "train_growth_vs_lora": memory[m]["train_growth_mib"] / max(base_mem["train_growth_mib"], 1e-9),
            "adapter_forward_s": infer[f"{m} adapter"]["median_s"],
            "adapter_forward_vs_base": infer[f"{m} adapter"]["median_s"] / base_infer,
            "merged_forward_s": infer[f"{m} merged"]["median_s"],
            "merged_forward_vs_base": infer[f"{m} merged"]["median_s"] / base_infer,
        }
    passed = all(r["merged_forward_vs_base"] <= INFERENCE_TARGET for r in rows.values())
    result = {
        "benchmark": "adapter_overhead",
        "config": run_config(args),
        "environment": environment(),
        "adaring_ring_rank": ring_rank,
        "base_forward_s": base_infer,
        "methods": rows,
        "targets": {"merged_forward_vs_base": INFERENCE_TARGET},
        "pass": passed,
    }
    write_result(args.output, result)

    print(f"Adapter overhead, preset {args.preset}, batch {args.batch_size}, rank {args.rank} "
          f"(adaring ring rank {ring_rank}), {torch.get_num_threads()} threads, {args.steps} training steps, "
          f"{args.inference_reps} forward passes; ratios are vs LoRA (training) and vs the base model (inference)")
    print(f"{'method':<10}{'params':>10}{'x lora':>8}{'step ms':>9}{'x lora':>8}{'peak MiB':>10}{'x lora':>8}"
          f"{'+MiB':>7}{'adapter fwd':>13}{'merged fwd':>12}")
    for m, r in rows.items():
        print(f"{m:<10}{r['trainable_parameters']:>10,}{r['params_vs_lora']:>8.3f}{r['median_step_s'] * 1e3:>9.1f}"
              f"{r['step_time_vs_lora']:>8.3f}{r['peak_rss_mib']:>10.0f}{r['peak_rss_vs_lora']:>8.3f}"
              f"{r['train_growth_mib']:>7.0f}{r['adapter_forward_vs_base']:>13.3f}{r['merged_forward_vs_base']:>12.3f}")
    print(f"base model forward: {base_infer * 1e3:.2f} ms (median)")
    print(f"{'PASS' if passed else 'FAIL'}: merged / base forward latency ≤ {INFERENCE_TARGET} for every method; "
          f"wrote {args.output}")
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
