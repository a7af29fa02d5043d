"""The native runner (runner/, C++) vs `mobilepeft bench` (Python bindings) on the same bundle.

Both time the same chat turn on the same ExecuTorch program and thread count (encode one image,
prefill image tokens + prompt in one call, ``--gen-len`` greedy steps); rounds alternate between
the two harnesses so machine noise hits both alike, and the table reports medians over rounds with
native/python ratios. The native runner's peak RSS is what a phone app holding the program pays;
the Python process also holds PyTorch. Bundles: the model exported fp32 and 8da4w (XNNPACK).

    make runner && python benchmarks/native_runner.py [--model outputs/demo/merged-lora]

Prints a table and writes docs/results/native_runner.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from common import RESULTS, environment, prepare, write_result

from mobilepeft.export.bench import BenchSettings, bench_bundle
from mobilepeft.export.executorch.exporter import export_executorch

KEYS = ("model_load_time_ms", "vision_encode_ms", "prefill_tokens_per_s", "decode_tokens_per_s",
        "time_to_first_token_ms", "peak_rss_mb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint to export (default: a fresh tiny preset)")
    ap.add_argument("--runner", type=Path, default=Path("build/runner/mobilepeft_runner"), help="`make runner` output")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5, help="measured turns per harness and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/native_runner"))
    ap.add_argument("--output", type=Path, default=RESULTS / "native_runner.json")
    args = ap.parse_args()
    if not args.runner.is_file():
        raise SystemExit(f"{args.runner} not found: run `make runner` first")
    model = args.model or prepare(args.work_dir, "tiny")[0]

    result = {"model": str(model), "threads": args.threads, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
              "runs": args.runs, "rounds": args.rounds, "bundles": {}, "environment": environment()}
    settings = BenchSettings(threads=args.threads, prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs)
    print(f"{'bundle':8}{'metric':26}{'python':>12}{'native':>12}{'native/python':>15}")
    for quantize in ("none", "8da4w"):
        bundle = args.work_dir / f"bundle-{quantize}"
        if not (bundle / "manifest.json").is_file():
            export_executorch(model, bundle, quantize=quantize, max_seq_len=128, echo=lambda _: None)
        samples: dict[str, list[dict]] = {"python": [], "native": []}
        for _ in range(args.rounds):
            samples["python"].append(bench_bundle(bundle, settings, echo=lambda _: None))
            done = subprocess.run([str(args.runner), "bench", "--bundle", str(bundle), "--threads", str(args.threads),
                                   "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len),
                                   "--runs", str(args.runs)], capture_output=True, text=True, check=True)
            samples["native"].append(json.loads(done.stdout))
        medians = {h: {k: statistics.median(s[k] for s in runs) for k in KEYS} for h, runs in samples.items()}
        ratios = {k: medians["native"][k] / medians["python"][k] for k in KEYS}
        result["bundles"][quantize] = {"median": medians, "native_over_python": ratios, "samples": samples}
        for k in KEYS:
            print(f"{quantize:8}{k:26}{medians['python'][k]:12.1f}{medians['native'][k]:12.1f}{ratios[k]:15.3f}")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
