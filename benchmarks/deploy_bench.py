"""Deployment latency at MobileVLM-1.7B's real size: ExecuTorch (fp32, 8da4w, merged adapter) vs
PyTorch eager, the memory-bandwidth bound, and llama.cpp — one run, one machine, same threads.

Builds (once, in --work-dir) the ``mobilevlm-1.7b-shape`` preset (real MobileVLM V2 1.7B
dimensions, random weights), a rank-8 LoRA adapter on it with non-zero deltas, and three
XNNPACK bundles through the CLI (``mobilepeft export executorch``): base fp32, base 8da4w, base +
adapter merged 8da4w. Then, in this process and interleaved run by run with the harness of
``mobilepeft bench`` (vision encode, prefill of image tokens + prompt, greedy decode):

* ExecuTorch fp32 vs PyTorch eager on the same export-friendly modules (target >= 2x decode);
* ExecuTorch 8da4w vs fp32 decode (target >= 2x);
* merged-adapter 8da4w vs base 8da4w (target 1.00 +- 0.03: merging costs nothing at run time);
* decode bandwidth: decoder weight bytes read per token x tokens/s / measured copy bandwidth;
* llama.cpp (llama-cpp-python, Q4_0 linears + Q8_0 output/embeddings of the same decoder written
  with ``gguf``; benchmarks/llamacpp_peer.py), in a subprocess with the same token counts and
  threads: ExecuTorch 8da4w decode / llama.cpp decode. Skipped, and said so, without
  llama-cpp-python.

    python benchmarks/deploy_bench.py
    python benchmarks/deploy_bench.py --preset tiny --runs 3  # the harness on the tiny model

Prints a table and writes docs/results/deploy_bench.json. At 1.7B: ~22 GB of RAM (all four
runtimes loaded at once; measured 21.6 GB peak), ~17 GB of disk, ~1 h the first time on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, environment, write_result

from mobilepeft.export.bench import (
    BenchSettings,
    bench_inputs,
    load_runtime,
    measure,
    peak_rss_mb,
    set_threads,
)
from mobilepeft.export.bundle import read_bundle

HERE = Path(__file__).parent
BUNDLES = {"fp32": ("none", False), "8da4w": ("8da4w", False), "8da4w_merged": ("8da4w", True)}


def build_model_and_adapter(preset: str, work: Path, seed: int = 0) -> tuple[Path, Path]:
    """The preset checkpoint and a LoRA adapter on it whose B factors are non-zero (so merging changes
    weights); another ``seed`` gives another adapter for the same checkpoint."""
    from mobilepeft.adapters.files import save_adapter
    from mobilepeft.adapters.inject import adapter_layers, inject_adapters
    from mobilepeft.adapters.spec import AdapterSpec
    from mobilepeft.loading import load_vlm
    from mobilepeft.presets import write_preset

    model_dir, adapter_dir = work / f"model-{preset}", work / (f"lora-{preset}" + (f"-seed{seed}" if seed else ""))
    if not (model_dir / "config.json").is_file():
        print(f"writing the {preset} preset to {model_dir}")
        write_preset(preset, model_dir, seed=0)
    if not (adapter_dir / "adapter_config.json").is_file():
        model = load_vlm(model_dir, load_tokenizer=False)
        spec = AdapterSpec(method="lora", rank=8, alpha=16)
        inject_adapters(model, spec)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in adapter_layers(model).values():
                layer.lora_B.weight.normal_(0, 0.01, generator=generator)
        save_adapter(model, spec, adapter_dir, base_model=str(model_dir), projector_trained=False)
        del model
    return model_dir, adapter_dir


def export_bundles(model_dir: Path, adapter_dir: Path, work: Path, max_seq_len: int,
                   export_s: dict[str, float], only: tuple[str, ...] | None = None) -> dict[str, Path]:
    """The three bundles (or the ``only`` ones), each exported by the CLI in its own process (reused when
    already there; the time of each export run now goes to ``export_s``)."""
    out = {}
    for name, (quantize, merged) in BUNDLES.items():
        if only is not None and name not in only:
            continue
        path = work / f"bundle-{model_dir.name}-{name}-{max_seq_len}"
        if not (path / "manifest.json").is_file():
            cmd = [sys.executable, "-m", "mobilepeft.export.cli", "export", "executorch", "--model", str(model_dir),
                   "--output-dir", str(path), "--quantize", quantize, "--max-seq-len", str(max_seq_len)]
            if merged:
                cmd += ["--adapter", str(adapter_dir)]
            print("$", " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            export_s[name] = time.perf_counter() - t0
            print(f"  exported in {export_s[name]:.0f} s", flush=True)
        out[name] = path
    return out


def copy_bandwidth_gb_s(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` read+write bandwidth of a ``mib`` MiB tensor copy on ``threads`` threads (GB/s)."""
    torch.set_num_threads(threads)
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def decoder_bytes_per_token(model_dir: Path) -> dict[str, float]:
    """Weight bytes one decode step reads: every decoder linear and lm_head (one embedding row is noise).

    8da4w: int4 weights + one 16-bit scale per 32 (what XNNPACK's blockwise kernels read), lm_head
    int8 + one fp32 scale per row.
    """
    from mobilepeft.models.config import MobileVLMConfig

    cfg = MobileVLMConfig.from_dir(model_dir).llama_config()
    d, f, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = d // cfg.num_attention_heads * cfg.num_key_value_heads
    linear = layers * (2 * d * d + 2 * d * kv + 3 * d * f)
    head = vocab * d
    return {"fp32": 4.0 * (linear + head), "8da4w": linear * (0.5 + 2 / 32) + head + 4 * vocab,
            "linear_params": linear, "lm_head_params": head}


def llamacpp(model_dir: Path, work: Path, settings: BenchSettings, prompt_tokens: int) -> dict[str, Any] | None:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: skipped (pip install llama-cpp-python gguf)")
        return None
    peer = str(HERE / "llamacpp_peer.py")

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, peer, *args], capture_output=True, text=True)
        if done.returncode == -signal.SIGILL:
            raise SystemExit(
                "llama.cpp died on an illegal instruction: it was compiled for an instruction set this CPU lists "
                "but the OS or VM does not enable (AMX, on this host). Rebuild it without, e.g.\n"
                "  CMAKE_ARGS='-DCMAKE_C_FLAGS=\"-mno-amx-tile -mno-amx-int8 -mno-amx-bf16\" "
                "-DCMAKE_CXX_FLAGS=\"-mno-amx-tile -mno-amx-int8 -mno-amx-bf16\"' "
                "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python\n"
                "or run with --no-llamacpp.")
        if done.returncode:
            raise SystemExit(f"{peer} {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout.strip().splitlines()[-1]

    tiny = work / "model-tiny"
    if not (tiny / "config.json").is_file():
        from mobilepeft.presets import write_preset

        write_preset("tiny", tiny, seed=0)
    check = json.loads(run("check", "--model", str(tiny)))
    print(f"llama.cpp conversion check (f32 GGUF vs PyTorch, tiny model): rel. diff "
          f"{check['f32_gguf_vs_pytorch_rel_diff']:.1e}")
    gguf_path = work / f"{model_dir.name}-q4_0.gguf"
    if not gguf_path.is_file():
        t0 = time.perf_counter()
        run("write", "--model", str(model_dir), "--out", str(gguf_path))
        print(f"wrote {gguf_path} in {time.perf_counter() - t0:.0f} s")
    result = json.loads(run("bench", "--gguf", str(gguf_path), "--threads", str(settings.threads),
                            "--prompt-tokens", str(prompt_tokens), "--gen-len", str(settings.gen_len),
                            "--runs", str(settings.runs), "--warmup", str(settings.warmup)))
    return dict(result, **check)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mobilevlm-1.7b-shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32, help="text tokens after the image tokens")
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/deploy"))
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--runtimes", default="executorch_fp32,executorch_8da4w,executorch_8da4w_merged,eager_fp32",
                    help="which to measure (e.g. executorch_8da4w,executorch_8da4w_merged for a longer merged-vs-base run)")
    ap.add_argument("--output", type=Path, default=RESULTS / "deploy_bench.json")
    args = ap.parse_args()
    settings = BenchSettings(threads=args.threads, prompt_len=args.prompt_len, gen_len=args.gen_len,
                             runs=args.runs, warmup=args.warmup)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    # In a child process: loading the 6.8 GB model to build the adapter leaves this process's
    # heap holding gigabytes the exports and the measured runtimes need.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        model_dir, adapter_dir = pool.submit(build_model_and_adapter, args.preset, args.work_dir).result()
    wanted = args.runtimes.split(",")
    unknown = sorted(set(wanted) - {f"executorch_{name}" for name in BUNDLES} - {"eager_fp32"})
    if unknown:
        ap.error(f"--runtimes: unknown {', '.join(unknown)}; choose from "
                 f"{', '.join([*(f'executorch_{name}' for name in BUNDLES), 'eager_fp32'])}")
    # Only the bundles the measured runtimes need (eager runs the fp32 bundle's modules).
    needed = tuple(name for name in BUNDLES if f"executorch_{name}" in wanted or (name == "fp32" and "eager_fp32" in wanted))
    export_s: dict[str, float] = {}
    paths = export_bundles(model_dir, adapter_dir, args.work_dir, args.max_seq_len, export_s, only=needed)
    bundles = {name: read_bundle(path) for name, path in paths.items()}
    first = next(iter(bundles.values()))
    pixels, prompt = bench_inputs(first, settings)
    set_threads(args.threads)
    runtimes = {f"executorch_{name}": load_runtime(bundle, "executorch") for name, bundle in bundles.items()
                if f"executorch_{name}" in wanted}
    if "eager_fp32" in wanted:
        runtimes["eager_fp32"] = load_runtime(bundles["fp32"], "eager")
    print(f"measuring {', '.join(runtimes)} interleaved, {args.threads} threads", flush=True)
    summaries = measure(runtimes, pixels, prompt, settings)
    peak = peak_rss_mb()
    del runtimes

    bandwidth = copy_bandwidth_gb_s(args.threads)
    per_token = decoder_bytes_per_token(model_dir)
    decode = {name: s["decode_tokens_per_s"] for name, s in summaries.items()}
    n_image = first.manifest["model"]["num_image_tokens"]
    peer = None if args.no_llamacpp else llamacpp(model_dir, args.work_dir, settings, n_image + args.prompt_len)

    def ratio(a: str, b: str, key: str = "decode_tokens_per_s") -> dict[str, float]:
        return {} if a not in summaries or b not in summaries else {"v": summaries[a][key] / summaries[b][key]}

    pairs = {
        "executorch_fp32_over_eager_decode": ratio("executorch_fp32", "eager_fp32"),
        "executorch_fp32_over_eager_prefill": ratio("executorch_fp32", "eager_fp32", "prefill_tokens_per_s"),
        "8da4w_over_fp32_decode": ratio("executorch_8da4w", "executorch_fp32"),
        "merged_over_base_decode_latency": ratio("executorch_8da4w", "executorch_8da4w_merged"),
        "merged_over_base_ttft": ratio("executorch_8da4w_merged", "executorch_8da4w", "time_to_first_token_ms"),
    }
    ratios = {key: value["v"] for key, value in pairs.items() if value}
    for name in ("fp32", "8da4w"):
        if f"executorch_{name}" in decode:
            ratios[f"bandwidth_fraction_{name}"] = per_token[name] * decode[f"executorch_{name}"] / 1e9 / bandwidth
    if peer and "executorch_8da4w" in summaries:
        ratios["executorch_vs_llamacpp_decode"] = decode["executorch_8da4w"] / peer["decode_tokens_per_s"]
        ratios["executorch_vs_llamacpp_prefill"] = (summaries["executorch_8da4w"]["prefill_tokens_per_s"]
                                                   / peer["prefill_tokens_per_s"])
    result = {
        "benchmark": "deploy_bench", "preset": args.preset, "settings": vars(settings), "max_seq_len": args.max_seq_len,
        "prompt_tokens": n_image + args.prompt_len, "device": f"host {platform.machine()} ({platform.node()})",
        "results": summaries, "llamacpp": peer, "ratios": ratios, "copy_bandwidth_gb_s": bandwidth,
        "decoder_bytes_per_token": per_token, "peak_rss_mb_all_runtimes": peak,
        "pte_bytes": {name: b.manifest["files"][b.section("executorch")["file"]]["bytes"] for name, b in bundles.items()},
        "export_s": export_s,  # exports run by this invocation (reused bundles are not timed)
        "selftest_rel_diff": {name: b.section("executorch").get("parity_rel_diff") for name, b in bundles.items()},
        "fp32_rel_diff_8da4w": {name: b.section("executorch").get("quantization_detail", {}).get("fp32_rel_diff")
                                for name, b in bundles.items()},
        "environment": environment(),
    }
    print(f"\n{'runtime':28}{'decode tok/s':>14}{'prefill tok/s':>15}{'TTFT ms':>10}{'vision ms':>11}{'load ms':>9}")
    for name, s in summaries.items():
        print(f"{name:28}{s['decode_tokens_per_s']:14.2f}{s['prefill_tokens_per_s']:15.1f}"
              f"{s['time_to_first_token_ms']:10.0f}{s['vision_encode_ms']:11.0f}{s['model_load_time_ms']:9.0f}")
    if peer:
        print(f"{'llama.cpp Q4_0':28}{peer['decode_tokens_per_s']:14.2f}{peer['prefill_tokens_per_s']:15.1f}"
              f"{'':10}{'':11}{peer['model_load_time_ms']:9.0f}")
    print(f"\ncopy bandwidth {bandwidth:.1f} GB/s; decoder bytes per token fp32 {per_token['fp32'] / 1e9:.2f} GB, "
          f"8da4w {per_token['8da4w'] / 1e9:.2f} GB")
    for key, value in ratios.items():
        print(f"{key:44}{value:8.3f}")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
