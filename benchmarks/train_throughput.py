"""Training throughput: samples/s and peak memory of mobilepeft LoRA vs PEFT LoRA vs full fine-tuning.

Same model, same batches, same optimizer (AdamW, clip 1.0). LoRA (both implementations) adapts
the seven LLM linears with the projector frozen; full fine-tuning trains every LLM weight and
the projector, as ``mobilepeft train --stage full`` does. Timing is interleaved step by step in
one process (benchmarks/common.py); memory is measured per variant in a fresh process: peak
CUDA memory allocated on a GPU, peak RSS on CPU. mobilepeft and PEFT LoRA start from the same
adapter weights, so their losses must agree (checked in fp32).

    python benchmarks/train_throughput.py                                  # CPU: small preset, fp32
    python benchmarks/train_throughput.py --preset mobilevlm-1.7b-shape --batch-size 8 \\
        --precision bf16 --gradient-checkpointing                           # a GPU: MobileVLM V2 1.7B's shapes
    python benchmarks/train_throughput.py --model /ckpt/MobileVLM_V2-1.7B   # a real checkpoint

Prints a table and writes docs/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
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
    peak_rss_mib,
    prepare,
    run_config,
    time_interleaved,
    train_step,
    write_result,
)
from train_step import build as build_lora

VARIANTS = ("mobilepeft-lora", "peft-lora", "full")


def build(variant: str, model_dir: Path, args: argparse.Namespace, device: torch.device):
    if variant == "full":
        from mobilepeft import load_vlm

        model = load_vlm(model_dir)
        model.requires_grad_(False)
        model.llm.requires_grad_(True)
        model.mm_projector.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    else:
        model, opt = build_lora("mobilepeft" if variant == "mobilepeft-lora" else "peft", model_dir, args.rank,
                                args.alpha, args.lr)
    if args.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device).train()  # moves the parameters in place: the optimizer's references stay valid
    return model, opt


def step_fn(model, opt, batches, device: torch.device, precision: str):
    from mobilepeft.train.trainer import to_device

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(i: int) -> float:
        loss = train_step(model, opt, to_device(batches[i], device), autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss
    return step


def peak_memory(variant: str, model_dir: Path, data_dir: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """In a fresh process: build, train the timed steps, report the peak."""
    batches = make_batches(model_dir, data_dir, args.batch_size, args.warmup + args.steps)
    model, opt = build(variant, model_dir, args, device)
    step = step_fn(model, opt, batches, device, args.precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(len(batches)):
        step(i)
    if device.type == "cuda":
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20, "memory_kind": "cuda allocated"}
    return {"peak_memory_mib": peak_rss_mib(), "memory_kind": "process peak RSS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "train_throughput.json", VARIANTS, steps=10, warmup=2)
    ap.add_argument("--model", type=Path, default=None, help="a MobileVLM checkpoint directory instead of --preset")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                    help="fp32 or bf16 autocast (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        model_dir, data_dir = prepare(work, args.preset)
        model_dir = args.model or model_dir
        if args.memory_worker:
            print(json.dumps(peak_memory(args.memory_worker, model_dir, data_dir, args, device)))
            return
        memory = {v: measure_memory_in_subprocess(__file__, v, args, work) for v in VARIANTS}

        batches = make_batches(model_dir, data_dir, args.batch_size, args.warmup + args.steps)
        built = {v: build(v, model_dir, args, device) for v in VARIANTS}
        trainable = {v: sum(p.numel() for p in m.parameters() if p.requires_grad) for v, (m, _) in built.items()}
        total = sum(p.numel() for p in built["full"][0].parameters())
        timing = time_interleaved({v: step_fn(*built[v], batches, device, args.precision) for v in VARIANTS},
                                  rounds=args.steps, warmup=args.warmup)
        seq_len = int(batches[0]["input_ids"].shape[1])

    rows = {v: {"trainable_parameters": trainable[v], "median_step_s": timing[v]["median_s"],
                "samples_per_s": args.batch_size / timing[v]["median_s"], **memory[v],
                "first_loss": timing[v]["values"][0], "last_loss": timing[v]["values"][-1]} for v in VARIANTS}
    base = rows["peft-lora"]
    for r in rows.values():
        r["throughput_vs_peft_lora"] = r["samples_per_s"] / base["samples_per_s"]
        r["memory_vs_peft_lora"] = r["peak_memory_mib"] / base["peak_memory_mib"]
    lora_diff = max(abs(a - b) for a, b in zip(timing["mobilepeft-lora"]["values"], timing["peft-lora"]["values"],
                                               strict=True))
    agree = lora_diff <= 1e-4 or args.precision != "fp32"
    result = {
        "benchmark": "train_throughput",
        "config": {**run_config(args), "device": str(device)},
        "environment": {**environment(), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                        else "cpu"},
        "model_parameters": total,
        "padded_text_len": seq_len,
        "variants": rows,
        "max_abs_loss_diff_mobilepeft_vs_peft": lora_diff,
        "pass": agree,
    }
    write_result(args.output, result)

    print(f"training throughput on {result['environment']['device']}, {args.precision}, "
          f"{'model ' + str(args.model) if args.model else 'preset ' + args.preset} ({total / 1e6:.1f}M parameters), "
          f"batch {args.batch_size} x {seq_len} text tokens (+ image), LoRA rank {args.rank}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}, {args.steps} timed steps")
    print(f"{'variant':<17}{'trainable':>12}{'samples/s':>11}{'step ms':>9}{'peak MiB':>10}"
          f"{'vs PEFT: speed':>16}{'memory':>8}")
    for v, r in rows.items():
        print(f"{v:<17}{r['trainable_parameters']:>12,}{r['samples_per_s']:>11.2f}{r['median_step_s'] * 1e3:>9.1f}"
              f"{r['peak_memory_mib']:>10.0f}{r['throughput_vs_peft_lora']:>15.3f}x{r['memory_vs_peft_lora']:>7.3f}x")
    print(f"memory: {rows['full']['memory_kind']}; max |loss mobilepeft - PEFT| over the steps: {lora_diff:.2e}")
    print(f"{'PASS' if agree else 'FAIL: the two LoRA implementations disagree'}; wrote {args.output}")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
