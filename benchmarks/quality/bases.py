"""One comparison (HyDRA against fixed LoRA by default) repeated on several pretrained bases.

    python benchmarks/quality/bases.py docs/results/quality_quick_search2.json \
        docs/results/quality_quick_search2_xeon.json --results docs/results/quality_bases.json

A quality run fine-tunes on one pretrained base, and the base's draw moves every method's score: the
same pretraining settings give another base on another CPU model (their float kernels differ) or
under another ``--base-seed``. One run therefore cannot say whether a method wins or the base let it.
This reads results JSONs of one protocol made on different bases and writes, per base: which of the
two methods the validation search prefers (each method's best candidate, mean validation accuracy
over tasks and search seeds) and, on the test split, the difference per task and on the mean over
tasks with its standard error, and whether the issue's target holds (ahead on every task, at least
``TARGET_POINTS`` on the mean, the mean more than twice its standard error).

The default schedule follows validation only, never test: ``method`` becomes the default when the
validation search prefers it on every base (docs/hydra.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/quality/bases.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.quality"

from benchmarks.common import write_result  # noqa: E402
from benchmarks.quality.report import compare, compare_mean  # noqa: E402

#: the issue's target on the mean over tasks, in accuracy points
TARGET_POINTS = 1.5
#: settings that may differ between the runs compared: which base, which methods and seeds were asked for
_FREE = ("pretrain", "methods", "seeds")


def base_of(results: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's base: its pretraining seed and the CPU that pretrained it (a record made before the
    pretraining named its CPU is taken to come from the machine of the run, which pretrained it at its start)."""
    record = results["pretrain"]
    return {"seed": record["settings"]["seed"], "cpu": record.get("cpu") or results["meta"]["machine"]["cpu"],
            "corpus_val_accuracy": record["stage2_val"]["accuracy"]}


def _best(search: dict[str, Any], method: str) -> dict[str, Any]:
    found = search["candidates"][search["as"].get(method, method)]
    best = max(found, key=lambda c: c["val_accuracy_mean"])
    return {"lr": best["lr"], "knobs": best["knobs"], "val_accuracy_mean": best["val_accuracy_mean"]}


def compare_on_base(results: dict[str, Any], method: str, reference: str) -> dict[str, Any]:
    """One base's row: the validation choice of both methods and the test differences (accuracy points)."""
    tasks = results["settings"]["tasks"]
    summary = results["summary"]
    best = {m: _best(results["search"], m) for m in (method, reference)}
    per_task = {}
    for t in tasks:
        diff, se = compare(summary, t, method, reference)
        per_task[t] = {"diff": diff, "se": se, method: 100 * summary[t][method]["accuracy_mean"],
                       reference: 100 * summary[t][reference]["accuracy_mean"]}
    mean_diff, mean_se = compare_mean(summary, tasks, method, reference)
    return {
        "base": base_of(results),
        "validation": best,
        "validation_prefers": method if best[method]["val_accuracy_mean"] > best[reference]["val_accuracy_mean"]
        else reference,
        "validation_diff": 100 * (best[method]["val_accuracy_mean"] - best[reference]["val_accuracy_mean"]),
        "test": per_task,
        "test_mean": {"diff": mean_diff, "se": mean_se,
                      method: sum(p[method] for p in per_task.values()) / len(tasks),
                      reference: sum(p[reference] for p in per_task.values()) / len(tasks)},
        "seeds": min(summary[t][m]["n_seeds"] for t in tasks for m in (method, reference)),
        "target_met": (all(p["diff"] >= 0 for p in per_task.values()) and mean_diff >= TARGET_POINTS
                       and mean_diff > 2 * mean_se),
    }


def compare_bases(runs: dict[str, dict[str, Any]], method: str = "hydra", reference: str = "lora") -> dict[str, Any]:
    """Every run's row, keyed as ``runs`` is (by file name), and what they say together. Refuses runs whose
    protocols differ (a base would not be the only difference) or two runs on one base."""
    if len(runs) < 2:
        raise ValueError(f"need results from at least two bases, got {len(runs)}")
    (first_path, first), *rest = runs.items()
    protocol = {k: v for k, v in first["settings"].items() if k not in _FREE}
    seen = {}
    for path, results in runs.items():
        for m in (method, reference):
            if m not in results["settings"]["methods"]:
                raise ValueError(f"{path}: has no {m!r} runs (methods: {', '.join(results['settings']['methods'])})")
        if "search" not in results:
            raise ValueError(f"{path}: made with --no-search; the comparison needs each method's validation choice")
        other = {k: v for k, v in results["settings"].items() if k not in _FREE}
        changed = sorted(k for k in protocol.keys() | other.keys() if protocol.get(k) != other.get(k))
        if changed:
            raise ValueError(f"{path}: protocol differs from {first_path} in {', '.join(changed)}; compare runs that "
                             "differ only in their base")
        base = base_of(results)
        identity = json.dumps({**results["pretrain"]["settings"], "cpu": base["cpu"]}, sort_keys=True)
        if identity in seen:
            raise ValueError(f"{path} and {seen[identity]} were fine-tuned on the same base (seed {base['seed']}, "
                             f"{base['cpu']}): one of them says nothing new")
        seen[identity] = path
    rows = {path: compare_on_base(results, method, reference) for path, results in runs.items()}
    return {
        "method": method,
        "reference": reference,
        "target_points": TARGET_POINTS,
        "protocol": protocol,
        "bases": rows,
        "validation_prefers_method_on_every_base": all(r["validation_prefers"] == method for r in rows.values()),
        # what a rule that pooled the bases would see, with the standard error of the bases' spread (the base is
        # the unit drawn); the default does not follow it: one base can carry the mean
        **_over_bases("validation_diff", [r["validation_diff"] for r in rows.values()]),
        **_over_bases("test_mean_diff", [r["test_mean"]["diff"] for r in rows.values()]),
        "target_met_on_every_base": all(r["target_met"] for r in rows.values()),
    }


def _over_bases(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_mean_over_bases": statistics.fmean(values),
            f"{name}_se_over_bases": statistics.stdev(values) / math.sqrt(len(values))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="quality results JSONs, one per base")
    parser.add_argument("--method", default="hydra")
    parser.add_argument("--reference", default="lora")
    parser.add_argument("--results", type=Path, default=Path("docs/results/quality_bases.json"))
    args = parser.parse_args(argv)
    runs = {}
    for path in args.runs:
        if path.name in runs:
            parser.error(f"{path}: a second results JSON named {path.name}; the rows are keyed by file name")
        try:
            runs[path.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"{path}: not a readable results JSON ({e})")
    try:
        out = compare_bases(runs, args.method, args.reference)
    except ValueError as e:
        parser.error(str(e))
    for path, row in out["bases"].items():
        b, m = row["base"], row["test_mean"]
        print(f"{path}: base seed {b['seed']} on {b['cpu']} (corpus {b['corpus_val_accuracy']:.1%}); validation "
              f"prefers {row['validation_prefers']}; test {args.method} - {args.reference} "
              + " ".join(f"{t} {p['diff']:+.1f}" for t, p in row["test"].items())
              + f", mean {m['diff']:+.1f} +- {m['se']:.1f}{' (target met)' if row['target_met'] else ''}")
    print(f"validation prefers {args.method} on every base: {out['validation_prefers_method_on_every_base']}; "
          f"target met on every base: {out['target_met_on_every_base']}; over the bases, validation "
          f"{out['validation_diff_mean_over_bases']:+.1f} +- {out['validation_diff_se_over_bases']:.1f}, test "
          f"{out['test_mean_diff_mean_over_bases']:+.1f} +- {out['test_mean_diff_se_over_bases']:.1f} points")
    write_result(args.results, out)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
