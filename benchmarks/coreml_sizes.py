"""Core ML package sizes and weight error per ``--compress`` mode, for docs/deploy-coreml.md.

Exports the model once at fp16 (iOS 18, stateful), then applies each compression the exporter
offers to the saved packages (the exporter's own ``compress_weights``) and reports, per package:
bytes, the ratio to fp16, and the relative RMS error of the decompressed weights against fp16.

    python benchmarks/coreml_sizes.py                                   # the demo's merged model (make demo)
    python benchmarks/coreml_sizes.py --preset mobilevlm-1.7b-shape --max-seq-len 512 --modes int8,int4 \\
        --output docs/results/coreml_sizes_1p7b.json      # writes the preset first (`mobilepeft init-model`)

Also records the time of each step and the process's peak RSS so far after it (with ``--preset``: of writing the checkpoint, in
its own process). Writes docs/results/coreml_sizes.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, peak_rss_mib, write_result

from mobilepeft.export.coreml.exporter import (
    COMPRESSIONS,
    DECODER_FILE,
    VISION_FILE,
    compress_weights,
    export_coreml,
)
from mobilepeft.export.coreml.inspect import load_package, package_bytes, stored_weights

PACKAGES = {"vision_encoder": VISION_FILE, "text_decoder": DECODER_FILE}


def _weight_error(package: Path, reference: dict[str, np.ndarray]) -> float:
    """RMS of (decompressed - fp16) over all weights, relative to the RMS of the fp16 weights."""
    diff = norm = 0.0
    for weight in stored_weights(package):
        want = reference[weight.name].reshape(weight.value.shape)
        diff += float(np.sum(np.square(weight.value - want, dtype=np.float64)))
        norm += float(np.sum(np.square(want, dtype=np.float64)))
    return (diff / norm) ** 0.5


def _parity(log: list[str]) -> float | None:
    """The export's check of the converted graphs against PyTorch (``logits rel. diff X``), as it printed it."""
    import re

    found = [float(m.group(1)) for line in log for m in [re.search(r"logits rel\. diff ([\d.e+-]+)", line)] if m]
    return found[-1] if found else None


#: ``mobilepeft init-model ...`` as typed, then the process's own peak RSS (VmHWM) on the last line.
_INIT_MODEL = """
import runpy, sys
sys.argv = ["mobilepeft", "init-model", *sys.argv[1:]]
try:
    runpy.run_module("mobilepeft", run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
print([line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1])
"""


def write_preset_timed(preset: str, out: Path) -> dict:
    """``mobilepeft init-model --preset`` in a child process: wall time, its peak RSS, bytes written."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _INIT_MODEL, "--preset", preset, "--output-dir", str(out)],
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(done.stdout)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"preset": preset, "seconds": seconds, "peak_rss_mib": int(done.stdout.split()[-1]) / 1024, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/merged-lora",
                        help="MobileVLM checkpoint directory (default: make demo's merged adapter model)")
    parser.add_argument("--preset", default=None,
                        help="write this preset with `mobilepeft init-model` into --work-dir first (timed) and use it")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench/coreml_sizes"))
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--modes", default=",".join(COMPRESSIONS),
                        help="comma-separated --compress modes (palettize4's k-means takes many minutes at 1B+ weights)")
    parser.add_argument("--output", type=Path, default=RESULTS / "coreml_sizes.json")
    args = parser.parse_args()
    model_write = None
    if args.preset:
        args.model = str(args.work_dir / f"model-{args.preset}")
        if not Path(args.model, "config.json").is_file():
            model_write = write_preset_timed(args.preset, Path(args.model))
    unknown = set(args.modes.split(",")) - set(COMPRESSIONS)
    if unknown:
        sys.exit(f"--modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(COMPRESSIONS)}")
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no checkpoint there (run `make demo` first, or pass --model)")
    with tempfile.TemporaryDirectory(prefix="coreml-sizes-") as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        log: list[str] = []
        export_coreml(args.model, scratch / "fp16", max_seq_len=args.max_seq_len,
                      echo=lambda line: (print(line), log.append(line)))
        export_s = time.perf_counter() - start
        export_peak = peak_rss_mib()
        rows: dict[str, dict] = {}
        for part, file in PACKAGES.items():
            fp16 = scratch / "fp16" / file
            reference = {w.name: w.value for w in stored_weights(fp16)}
            for mode in ["none", *(m for m in args.modes.split(",") if m != "none")]:
                out = fp16 if mode == "none" else scratch / mode / file
                if mode != "none":
                    start = time.perf_counter()
                    compress_weights(load_package(fp16), mode).save(str(out))
                    rows.setdefault(mode, {})[f"{part}_compress_s"] = time.perf_counter() - start
                    rows[mode][f"{part}_compress_peak_rss_mib_so_far"] = peak_rss_mib()
                row = rows.setdefault(mode, {})
                row[f"{part}_bytes"] = package_bytes(out)
                row[f"{part}_ratio"] = package_bytes(out) / package_bytes(fp16)
                row[f"{part}_weight_rel_rms"] = _weight_error(out, reference)
        for row in rows.values():
            total = row["vision_encoder_bytes"] + row["text_decoder_bytes"]
            row["total_bytes"] = total
            row["total_ratio"] = total / (rows["none"]["vision_encoder_bytes"] + rows["none"]["text_decoder_bytes"])
    print(f"\n{'compress':<12}{'VisionEncoder':>16}{'TextDecoder':>16}{'total':>16}{'ratio':>8}"
          f"{'weight err (dec)':>18}")
    for mode, row in rows.items():
        print(f"{mode:<12}{row['vision_encoder_bytes'] / 1e6:>14.2f}MB{row['text_decoder_bytes'] / 1e6:>14.2f}MB"
              f"{row['total_bytes'] / 1e6:>14.2f}MB{row['total_ratio']:>8.3f}{row['text_decoder_weight_rel_rms']:>18.4f}")
    write_result(args.output, {"benchmark": "coreml_sizes", "model": args.model, "preset": args.preset,
                               "max_seq_len": args.max_seq_len, "model_write": model_write,
                               "fp16_export_s": export_s, "fp16_export_peak_rss_mib": export_peak,
                               "export_log": log, "graphs_vs_pytorch_rel_diff": _parity(log),
                               "peak_rss_mib": peak_rss_mib(), "modes": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
