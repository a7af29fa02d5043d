"""One LoRA training step: mobilepeft's LoRALinear vs PEFT's LoRA, same model, batch, rank, targets.

Time is measured in one process with the two models interleaved step by step (order alternating
each round), so machine noise hits both alike; the ratio uses medians. Memory is measured in a
fresh subprocess per variant (peak RSS of the whole process, and the growth of peak RSS over the
training steps alone, which is what the adapter implementation controls). Both variants start from
identical adapter weights and see identical batches, so their loss trajectories must agree: the
benchmark checks that too, otherwise a faster step could be a wrong one.

    python benchmarks/train_step.py                 # small preset, batch 8, rank 16
    python benchmarks/train_step.py --preset tiny --steps 10

Prints a table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("mobilepeft", "peft")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def prepare(work: Path, preset: str) -> tuple[Path, Path]:
    """A checkpoint and a synthetic dataset in ``work`` (reused when already there)."""
    from mobilepeft.data.synth import write_synthetic_dataset
    from mobilepeft.models.presets import write_preset

    model_dir, data_dir = work / f"model-{preset}", work / "data"
    if not (model_dir / "config.json").exists():
        write_preset(preset, model_dir, seed=0)
    if not (data_dir / "train.json").exists():
        write_synthetic_dataset(data_dir, n_train=128, n_val=8, seed=0)
    return model_dir, data_dir


def make_batches(model_dir: Path, data_dir: Path, batch_size: int, count: int) -> list[dict[str, Any]]:
    from mobilepeft.data import SupervisedDataset, collate_batch, load_llava
    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.tokenizer import Tokenizer

    config = MobileVLMConfig.from_dir(model_dir)
    tok = Tokenizer(model_dir)
    convs, _ = load_llava(data_dir / "train.json", data_dir)
    ds = SupervisedDataset(convs, tok, data_dir, config.image_size, config.num_image_tokens, max_length=512)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        idx = torch.randint(len(ds), (batch_size,), generator=g).tolist()
        batches.append(collate_batch([ds[i] for i in idx], pad_id=tok.pad_id))
    return batches


def build(variant: str, model_dir: Path, rank: int, alpha: float, lr: float):
    """The model with LoRA on ``TARGETS`` of the LLM, projector frozen, and its AdamW optimizer."""
    from mobilepeft import load_vlm

    model = load_vlm(model_dir)
    model.requires_grad_(False)
    torch.manual_seed(1234)
    if variant == "mobilepeft":
        from mobilepeft.adapters.inject import inject_adapters
        from mobilepeft.adapters.spec import AdapterSpec

        for layer in inject_adapters(model, AdapterSpec(method="lora", rank=rank, alpha=alpha, dropout=0.0,
                                                        target_modules=TARGETS)).values():
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
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


def train_step(model, optimizer, batch: dict[str, Any]) -> float:
    out = model(batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
                labels=batch["labels"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def time_interleaved(models: dict[str, tuple], batches: list, warmup: int) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {v: [] for v in models}
    losses: dict[str, list[float]] = {v: [] for v in models}
    for i, batch in enumerate(batches):
        order = list(models) if i % 2 == 0 else list(reversed(models))
        for v in order:
            t0 = time.perf_counter()
            loss = train_step(*models[v], batch)
            dt = time.perf_counter() - t0
            losses[v].append(loss)
            if i >= warmup:
                times[v].append(dt)
    return {v: {"median_s": statistics.median(times[v]), "min_s": min(times[v]), "losses": losses[v]}
            for v in models}


def memory_worker(variant: str, model_dir: Path, data_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Runs inside a fresh process: model + batches, then the steps; reports RSS figures."""
    batches = make_batches(model_dir, data_dir, args.batch_size, args.warmup + args.steps)
    model, opt = build(variant, model_dir, args.rank, args.alpha, args.lr)
    before = _current_rss_mib()
    for batch in batches:
        train_step(model, opt, batch)
    peak = _peak_rss_mib()
    return {"rss_before_train_mib": before, "peak_rss_mib": peak, "train_growth_mib": peak - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", help="model preset to build (default: small)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where model and data are built (default: temp)")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/train_step.json"))
    ap.add_argument("--memory-worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_worker:
        model_dir, data_dir = prepare(args.work_dir, args.preset)
        print(json.dumps(memory_worker(args.memory_worker, model_dir, data_dir, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        model_dir, data_dir = prepare(work, args.preset)
        memory = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--memory-worker", variant, "--work-dir", str(work)]
            for flag in ("preset", "batch_size", "rank", "alpha", "lr", "steps", "warmup", "threads"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                sys.exit(f"memory worker for {variant} failed:\n{run.stderr}")
            memory[variant] = json.loads(run.stdout.strip().splitlines()[-1])

        batches = make_batches(model_dir, data_dir, args.batch_size, args.warmup + args.steps)
        models = {v: build(v, model_dir, args.rank, args.alpha, args.lr) for v in VARIANTS}
        n_trainable = {v: sum(p.numel() for p in m.parameters() if p.requires_grad) for v, (m, _) in models.items()}
        if n_trainable["mobilepeft"] != n_trainable["peft"]:
            sys.exit(f"variants differ in trainable parameters: {n_trainable}")
        timing = time_interleaved(models, batches, args.warmup)
        seq_len = int(models["mobilepeft"][0](batches[0]["input_ids"][:1],
                                              pixel_values=batches[0]["pixel_values"][:1]).logits.shape[1])

    ours, ref = timing["mobilepeft"], timing["peft"]
    loss_diff = max(abs(a - b) for a, b in zip(ours["losses"], ref["losses"], strict=True))
    ratios = {
        "time": ours["median_s"] / ref["median_s"],
        "peak_rss": memory["mobilepeft"]["peak_rss_mib"] / memory["peft"]["peak_rss_mib"],
        "train_growth": memory["mobilepeft"]["train_growth_mib"] / max(memory["peft"]["train_growth_mib"], 1e-9),
    }
    result = {
        "benchmark": "train_step",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "memory_worker"},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "machine": platform.machine(), "python": platform.python_version()},
        "spliced_seq_len": seq_len,
        "trainable_parameters": n_trainable["mobilepeft"],
        "variants": {v: {"median_step_s": timing[v]["median_s"], "min_step_s": timing[v]["min_s"],
                         "first_loss": timing[v]["losses"][0], "last_loss": timing[v]["losses"][-1], **memory[v]}
                     for v in VARIANTS},
        "ratios_mobilepeft_over_peft": ratios,
        "max_abs_loss_diff": loss_diff,
        "targets": {"time": 1.10, "peak_rss": 1.10},
        "pass": ratios["time"] <= 1.10 and ratios["peak_rss"] <= 1.10 and loss_diff <= 1e-4,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"LoRA train step, preset {args.preset}, batch {args.batch_size} x {seq_len} tokens, rank {args.rank}, "
          f"{n_trainable['mobilepeft']:,} trainable, {torch.get_num_threads()} threads, {args.steps} timed steps")
    print(f"{'variant':<12}{'median ms':>11}{'min ms':>9}{'peak RSS MiB':>14}{'train +MiB':>12}{'loss 0→N':>18}")
    for v in VARIANTS:
        r = result["variants"][v]
        print(f"{v:<12}{r['median_step_s'] * 1e3:>11.1f}{r['min_step_s'] * 1e3:>9.1f}{r['peak_rss_mib']:>14.0f}"
              f"{r['train_growth_mib']:>12.0f}{r['first_loss']:>9.4f}→{r['last_loss']:.4f}")
    print(f"ratio mobilepeft/peft: time {ratios['time']:.3f}, peak RSS {ratios['peak_rss']:.3f}, "
          f"training growth {ratios['train_growth']:.3f}  (targets ≤ 1.10)")
    print(f"max |loss difference| over {len(ours['losses'])} steps: {loss_diff:.2e}")
    print(f"{'PASS' if result['pass'] else 'FAIL'}; wrote {args.output}")
    if not result["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
