"""One LoRA training step: mobilepeft's LoRALinear vs PEFT's LoRA, same model, batch, rank, targets.

Timing and memory as in benchmarks/common.py. Both variants start from identical adapter weights
and see identical batches, so their loss trajectories must agree: the benchmark checks that too,
otherwise a faster step could be a wrong one.

    python benchmarks/train_step.py                 # small preset, batch 8, rank 16
    python benchmarks/train_step.py --preset tiny --steps 10

Prints a table and writes docs/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zlib
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

VARIANTS = ("mobilepeft", "peft")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(variant: str, model_dir: Path, rank: int, alpha: float, lr: float):
    """The model with LoRA on ``TARGETS`` of the LLM, projector frozen, and its AdamW optimizer."""
    from mobilepeft import load_vlm

    model = load_vlm(model_dir)
    model.requires_grad_(False)
    if variant == "mobilepeft":
        from mobilepeft.adapters.inject import adapter_parameters, inject_adapters
        from mobilepeft.adapters.spec import AdapterSpec

        inject_adapters(model, AdapterSpec(method="lora", rank=rank, alpha=alpha, dropout=0.0, target_modules=TARGETS))
        for p in adapter_parameters(model).values():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS),
                                model.llm)
    sync_adapter_init(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=lr)


def sync_adapter_init(model: torch.nn.Module) -> None:
    """Give both variants the same A (seeded per module path) and B = 0, independent of injection order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            path = name.replace(".default", "")  # PEFT's ModuleDict level
            if ".lora_A." in path:
                g = torch.Generator().manual_seed(zlib.crc32(path.split(".lora_A.")[0].encode()))
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.1)
            elif ".lora_B." in path:
                p.zero_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "train_step.json", VARIANTS, steps=20, warmup=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_worker:
        model_dir, data_dir = prepare(args.work_dir, args.preset)
        batches = make_batches(model_dir, data_dir, args.batch_size, args.warmup + args.steps)
        model, opt = build(args.memory_worker, model_dir, args.rank, args.alpha, args.lr)
        print(json.dumps(memory_of_training(model, opt, batches)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        model_dir, data_dir = prepare(work, args.preset)
        memory = {v: measure_memory_in_subprocess(__file__, v, args, work) for v in VARIANTS}

        batches = make_batches(model_dir, data_dir, args.batch_size, args.warmup + args.steps)
        models = {v: build(v, model_dir, args.rank, args.alpha, args.lr) for v in VARIANTS}
        n_trainable = {v: sum(p.numel() for p in m.parameters() if p.requires_grad) for v, (m, _) in models.items()}
        if n_trainable["mobilepeft"] != n_trainable["peft"]:
            sys.exit(f"variants differ in trainable parameters: {n_trainable}")
        # rounds = steps, so every variant trains on batch i in round i
        timing = time_interleaved({v: (lambda i, v=v: train_step(*models[v], batches[i])) for v in VARIANTS},
                                  rounds=args.steps, warmup=args.warmup)
        seq_len = int(batches[0]["input_ids"].shape[1])

    ours, ref = timing["mobilepeft"], timing["peft"]
    loss_diff = max(abs(a - b) for a, b in zip(ours["values"], ref["values"], strict=True))
    ratios = {
        "time": ours["median_s"] / ref["median_s"],
        "peak_rss": memory["mobilepeft"]["peak_rss_mib"] / memory["peft"]["peak_rss_mib"],
        "train_growth": memory["mobilepeft"]["train_growth_mib"] / max(memory["peft"]["train_growth_mib"], 1e-9),
    }
    result = {
        "benchmark": "train_step",
        "config": run_config(args),
        "environment": environment(),
        "padded_text_len": seq_len,
        "trainable_parameters": n_trainable["mobilepeft"],
        "variants": {v: {"median_step_s": timing[v]["median_s"], "min_step_s": timing[v]["min_s"],
                         "first_loss": timing[v]["values"][0], "last_loss": timing[v]["values"][-1], **memory[v]}
                     for v in VARIANTS},
        "ratios_mobilepeft_over_peft": ratios,
        "max_abs_loss_diff": loss_diff,
        "targets": {"time": 1.10, "peak_rss": 1.10},
        "pass": ratios["time"] <= 1.10 and ratios["peak_rss"] <= 1.10 and loss_diff <= 1e-4,
    }
    write_result(args.output, result)

    print(f"LoRA train step, preset {args.preset}, batch {args.batch_size} x {seq_len} text tokens (+ image), "
          f"rank {args.rank}, {n_trainable['mobilepeft']:,} trainable, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps")
    print(f"{'variant':<12}{'median ms':>11}{'min ms':>9}{'peak RSS MiB':>14}{'train +MiB':>12}{'loss 0→N':>18}")
    for v in VARIANTS:
        r = result["variants"][v]
        print(f"{v:<12}{r['median_step_s'] * 1e3:>11.1f}{r['min_step_s'] * 1e3:>9.1f}{r['peak_rss_mib']:>14.0f}"
              f"{r['train_growth_mib']:>12.0f}{r['first_loss']:>9.4f}→{r['last_loss']:.4f}")
    print(f"ratio mobilepeft/peft: time {ratios['time']:.3f}, peak RSS {ratios['peak_rss']:.3f}, "
          f"training growth {ratios['train_growth']:.3f}  (targets ≤ 1.10)")
    print(f"max |loss difference| over {len(ours['values'])} steps: {loss_diff:.2e}")
    print(f"{'PASS' if result['pass'] else 'FAIL'}; wrote {args.output}")
    if not result["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
