"""Core ML package sizes and weight error per ``--compress`` mode, for docs/deploy-coreml.md.

Exports the model once at fp16 (iOS 18, stateful), then applies each compression the exporter
offers to the saved packages (the exporter's own ``compress_weights``) and reports, per package:
bytes, the ratio to fp16, and the relative RMS error of the decompressed weights against fp16.

    python benchmarks/coreml_sizes.py                                   # the demo model (make demo)
    python benchmarks/coreml_sizes.py --model outputs/bench/deploy/model-mobilevlm-1.7b-shape \\
        --max-seq-len 512 --modes int8,int4 --output benchmarks/results/coreml_sizes_1p7b.json

Writes benchmarks/results/coreml_sizes.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mobilepeft.export.coreml_export import (
    COMPRESSIONS,
    DECODER_FILE,
    VISION_FILE,
    compress_weights,
    export_coreml,
)
from mobilepeft.export.coreml_inspect import load_package, package_bytes, stored_weights
from mobilepeft.io import write_json

PACKAGES = {"vision_encoder": VISION_FILE, "text_decoder": DECODER_FILE}


def _weight_error(package: Path, reference: dict[str, np.ndarray]) -> float:
    """RMS of (decompressed - fp16) over all weights, relative to the RMS of the fp16 weights."""
    diff = norm = 0.0
    for weight in stored_weights(package):
        want = reference[weight.name].reshape(weight.value.shape)
        diff += float(np.sum(np.square(weight.value - want, dtype=np.float64)))
        norm += float(np.sum(np.square(want, dtype=np.float64)))
    return (diff / norm) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/model", help="MobileVLM checkpoint directory")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--modes", default=",".join(COMPRESSIONS),
                        help="comma-separated --compress modes (palettize4's k-means takes many minutes at 1B+ weights)")
    parser.add_argument("--output", default="benchmarks/results/coreml_sizes.json")
    args = parser.parse_args()
    unknown = set(args.modes.split(",")) - set(COMPRESSIONS)
    if unknown:
        sys.exit(f"--modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(COMPRESSIONS)}")
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no checkpoint there (run `make demo` first, or pass --model)")
    with tempfile.TemporaryDirectory(prefix="coreml-sizes-") as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        export_coreml(args.model, scratch / "fp16", max_seq_len=args.max_seq_len, echo=print)
        export_s = time.perf_counter() - start
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
    write_json(args.output, {"model": args.model, "max_seq_len": args.max_seq_len, "fp16_export_s": export_s,
                             "modes": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
