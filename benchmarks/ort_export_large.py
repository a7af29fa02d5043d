"""ONNX Runtime training export of a decoder over protobuf's 2 GB limit: time, peak RSS, sizes, self-test.

Builds a MobileLLaMA-1.4B-shaped model (benchmarks/ondevice_train.py's shape: hidden 2048, MLP 5632,
vocabulary 32000, random weights) truncated to ``--layers`` layers (9: 2.4 GB of fp32 decoder
weights) with a rank-16 LoRA, in a child process; then runs ``export_onnx_training`` (what
``mobilepeft export onnx-training`` runs) in a fresh child process and records its wall time, that
process's peak RSS, the bundle's sizes and the self-test's ORT-vs-PyTorch loss difference.

    python benchmarks/ort_export_large.py              # 9 layers: ~4 min and ~15 GiB on 2 cores

Writes docs/results/ort_export_large.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, peak_rss_mib, write_result


def export_worker(model_dir: Path, adapter_dir: Path, bundle: Path) -> None:
    """In a fresh process: export, then print seconds, this process's peak RSS and the log as JSON."""
    from mobilepeft.export.ort.exporter import export_onnx_training

    log: list[str] = []
    t0 = time.perf_counter()
    export_onnx_training(model_dir, adapter_dir, bundle, echo=log.append)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(), "log": log}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/ort_export_large"))
    ap.add_argument("--output", type=Path, default=RESULTS / "ort_export_large.json")
    ap.add_argument("--export-worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.export_worker:
        return export_worker(*args.export_worker)
    if args.model_worker:
        from ondevice_train import prepare_model

        print(json.dumps([str(p) for p in prepare_model(args.work_dir, "mobilellama-1.4b", args.layers, args.rank)]))
        return

    def child(*extra: str) -> str:
        done = subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--rank", str(args.rank),
                               "--work-dir", str(args.work_dir), *extra], check=True, capture_output=True, text=True)
        return done.stdout.strip().splitlines()[-1]

    t0 = time.perf_counter()
    model_dir, adapter_dir = (Path(p) for p in json.loads(child("--model-worker")))
    build_s = time.perf_counter() - t0
    bundle = args.work_dir / f"bundle-{args.layers}L"
    if bundle.exists():
        sys.exit(f"{bundle} exists: remove it to measure the export again")
    export = json.loads(child("--export-worker", str(model_dir), str(adapter_dir), str(bundle)))
    manifest = json.loads((bundle / "manifest.json").read_text())
    section = manifest["onnx_training"]
    selftest = [float(m.group(1)) for line in export["log"] for m in [re.search(r"rel\. diff ([\d.e+-]+)", line)] if m]
    result = {
        "benchmark": "ort_export_large", "shape": "mobilellama-1.4b", "layers": args.layers, "rank": args.rank,
        "model_build_s": build_s, "export_s": export["seconds"], "export_peak_rss_mib": export["peak_rss_mib"],
        "frozen_bytes": section["frozen"]["bytes"],
        "bundle_bytes": sum(f["bytes"] for f in manifest["files"].values()),
        "files": {k: v["bytes"] for k, v in manifest["files"].items()},
        "selftest_rel_diff": selftest[-1] if selftest else None, "export_log": export["log"],
    }
    print(f"{args.layers}-layer MobileLLaMA-1.4B-shaped decoder: frozen fp32 weights {result['frozen_bytes'] / 1e9:.2f} GB; "
          f"export {result['export_s']:.0f} s, peak RSS {result['export_peak_rss_mib'] / 1024:.1f} GiB; "
          f"self-test rel. diff {result['selftest_rel_diff']}")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
