"""What keeping the adapter as data costs at run time (docs/on-device-loop.md, "Cost").

One checkpoint and one rank-8 LoRA adapter with non-zero deltas (benchmarks/deploy_bench.py's), two
8da4w XNNPACK bundles exported by the CLI: the adapter merged into the weights, and the adapter kept
as data (``--adapter-as-data``). The native runner (``make runner``) times the same chat turn on
both, alternating bundle by bundle over ``--rounds`` so machine noise hits both alike; the figures
are the medians of its per-round medians and the ratio adapter-as-data / merged (goal: decode time
<= 1.10x merged, ideally 1.05x). Then ``bench --swap`` on the as-data bundle with a second adapter
(another seed, written by ``mobilepeft adapter to-ptd``): swap time, RSS before and after the swap
(the base must not be loaded twice), first token after a swap, peak RSS. And the file sizes.

    make runner && python benchmarks/adapter_cost.py --preset tiny --rounds 5 --runs 20
    make runner && python benchmarks/adapter_cost.py --rounds 5       # MobileVLM-1.7B shape

(The tiny model decodes a token in about a millisecond: it needs many turns per sample to rise
above the machine's noise.)

Writes docs/results/adapter_cost_<preset>.json. At 1.7B the two exports take ~15 min each on 2
cores (reused from --work-dir afterwards) and ~19 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, write_result
from deploy_bench import build_model_and_adapter

BUNDLES = {"merged": [], "as_data": ["--adapter-as-data"]}
KEYS = ("decode_tokens_per_s", "prefill_tokens_per_s", "time_to_first_token_ms", "vision_encode_ms",
        "model_load_time_ms", "peak_rss_mb")


def export(model_dir: Path, adapter_dir: Path, out: Path, extra: list[str], max_seq_len: int) -> dict[str, float]:
    """``mobilepeft export executorch`` in its own process (skipped when ``out`` is there)."""
    if (out / "manifest.json").is_file():
        return {}
    cmd = [sys.executable, "-m", "mobilepeft.export.cli", "export", "executorch", "--model", str(model_dir),
           "--adapter", str(adapter_dir), "--output-dir", str(out), "--quantize", "8da4w",
           "--max-seq-len", str(max_seq_len), *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far, MiB
    print(f"  exported in {seconds:.0f} s", flush=True)
    return {"seconds": seconds, "children_peak_rss_mb": peak}


def runner_json(runner: Path, *args: str | Path) -> dict[str, Any]:
    done = subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{runner} {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mobilevlm-1.7b-shape")
    ap.add_argument("--runner", type=Path, default=Path("build/runner/mobilepeft_runner"), help="`make runner` output")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3, help="measured turns per bundle and round (after 1 warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--swaps", type=int, default=5, help="swap-and-back cycles of bench --swap")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/adapter_cost"))
    ap.add_argument("--output", type=Path, default=None, help="default: docs/results/adapter_cost_<preset>.json")
    ap.add_argument("--export-only", action="store_true",
                    help="build the bundles and stop (measure later, on an otherwise idle machine)")
    args = ap.parse_args()
    if not args.runner.is_file():
        raise SystemExit(f"{args.runner} not found: run `make runner` first")
    output = args.output or RESULTS / f"adapter_cost_{args.preset.replace('mobilevlm-', '').replace('.', 'p')}.json"
    args.work_dir.mkdir(parents=True, exist_ok=True)

    # In child processes: building the adapters loads the model, which this process must not keep.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        model_dir, adapter_dir = pool.submit(build_model_and_adapter, args.preset, args.work_dir).result()
        _, other_adapter = pool.submit(build_model_and_adapter, args.preset, args.work_dir, 1).result()
    paths = {name: args.work_dir / f"bundle-{args.preset}-8da4w-{name}-{args.max_seq_len}" for name in BUNDLES}
    exports = {name: export(model_dir, adapter_dir, paths[name], extra, args.max_seq_len)
               for name, extra in BUNDLES.items()}
    swap_file = args.work_dir / f"swap-{args.preset}.ptd"
    if not swap_file.is_file():
        subprocess.run([sys.executable, "-m", "mobilepeft.export.cli", "adapter", "to-ptd", "--bundle",
                        str(paths["as_data"]), "--adapter", str(other_adapter), "--output", str(swap_file)], check=True)

    if args.export_only:
        print(json.dumps(exports))
        return
    bench = ["--threads", args.threads, "--prompt-len", args.prompt_len, "--gen-len", args.gen_len, "--runs", args.runs]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in BUNDLES}
    for r in range(args.rounds):
        for name in BUNDLES if r % 2 == 0 else reversed(BUNDLES):
            samples[name].append(runner_json(args.runner, "bench", "--bundle", paths[name], *bench))
        print(f"round {r + 1}/{args.rounds}: decode " + ", ".join(
            f"{n} {samples[n][-1]['decode_tokens_per_s']:.1f}" for n in BUNDLES) + " tok/s", flush=True)
    medians = {n: {k: statistics.median(s[k] for s in runs) for k in KEYS} for n, runs in samples.items()}
    time_ratio = {  # as-data time / merged time: tokens/s inverted
        "decode": medians["merged"]["decode_tokens_per_s"] / medians["as_data"]["decode_tokens_per_s"],
        "prefill": medians["merged"]["prefill_tokens_per_s"] / medians["as_data"]["prefill_tokens_per_s"],
        "time_to_first_token": medians["as_data"]["time_to_first_token_ms"] / medians["merged"]["time_to_first_token_ms"],
    }
    swap = runner_json(args.runner, "bench", "--bundle", paths["as_data"], "--swap", swap_file, "--threads",
                       args.threads, "--runs", args.swaps, "--gen-len", 4)
    sizes = {"model.pte": (paths["as_data"] / "model.pte").stat().st_size,
             "adapter.ptd": (paths["as_data"] / "adapter.ptd").stat().st_size,
             "merged model.pte": (paths["merged"] / "model.pte").stat().st_size}
    result = {"preset": args.preset, "threads": args.threads, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
              "runs": args.runs, "rounds": args.rounds, "max_seq_len": args.max_seq_len, "exports": exports,
              "median": medians, "as_data_over_merged_time": time_ratio, "decode_goal": 1.10,
              "swap": {k: swap[k] for k in swap if "swap" in k or k == "peak_rss_mb"}, "file_bytes": sizes,
              "adapter_over_pte": sizes["adapter.ptd"] / sizes["model.pte"], "samples": samples}
    print(f"{'':24}{'merged':>12}{'as data':>12}{'time ratio':>12}")
    for key, label in (("decode_tokens_per_s", "decode"), ("prefill_tokens_per_s", "prefill")):
        print(f"{label + ' tok/s':24}{medians['merged'][key]:12.1f}{medians['as_data'][key]:12.1f}"
              f"{time_ratio[label]:12.3f}")
    print(f"swap {swap['adapter_swap_ms']:.2f} ms (median of {2 * args.swaps}); RSS {swap['rss_before_swap_mb']:.0f} -> "
          f"{swap['rss_after_swap_mb']:.0f} MB; first token after swap {swap['time_to_first_token_after_swap_ms']:.0f} ms; "
          f"peak RSS {swap['peak_rss_mb']:.0f} MB")
    print(f"adapter.ptd {sizes['adapter.ptd'] / 1e6:.2f} MB vs model.pte {sizes['model.pte'] / 1e6:.1f} MB")
    write_result(output, result)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
