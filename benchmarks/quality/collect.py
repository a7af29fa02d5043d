"""Table of a GPU run of benchmarks/quality/gpu_recipe.sh: mean ± std over seeds per eval set.

    python -m benchmarks.quality.collect runs/quality-gpu

Reads ``RUN/METHOD/seedN/eval-NAME.json`` (``mobilepeft eval --metrics-json``), prints a markdown
table of VQA accuracy (exact match under the VQA normalisation where a set has one reference
answer) and writes ``RUN/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.quality.methods import METHODS


def collect(root: Path) -> dict[str, dict[str, list[float]]]:
    scores: dict[str, dict[str, list[float]]] = {}
    for file in sorted(root.glob("*/seed*/eval-*.json")):
        method, name = file.parent.parent.name, file.stem.removeprefix("eval-")
        scores.setdefault(method, {}).setdefault(name, []).append(json.loads(file.read_text())["overall"]["vqa_accuracy"])
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the OUT directory of gpu_recipe.sh")
    args = parser.parse_args(argv)
    scores = collect(args.run)
    if not scores:
        print(f"no eval-*.json under {args.run}/METHOD/seedN/", file=sys.stderr)
        return 1
    sets = sorted({name for per in scores.values() for name in per})
    print("| Method | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    summary = {}
    for method in [m for m in METHODS if m in scores] + sorted(set(scores) - set(METHODS)):
        cells = []
        for name in sets:
            values = scores[method].get(name, [])
            summary.setdefault(method, {})[name] = {"mean": statistics.fmean(values) if values else None,
                                                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                                    "seeds": len(values)}
            cells.append("–" if not values else f"{100 * statistics.fmean(values):.1f} ± "
                         f"{100 * summary[method][name]['std']:.1f} (n={len(values)})")
        print(f"| {METHODS.get(method, (method,))[0]} | " + " | ".join(cells) + " |")
    from mobilepeft.io import write_json

    write_json(args.run / "summary.json", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
