"""HyDRA's reallocations in a quality-benchmark run: does the performance model predict what happens?

    python benchmarks/quality/events.py docs/results/quality_hydra_ablation.json

Reads the rank history (``rank_history.json``) of every test run of the scheduled methods in the
results JSON from the benchmark's run cache (``--work``, default ``outputs/quality/``) and writes,
per method and task: granule moves per run, the mean predicted and observed loss change of the
events that moved rank (observed: the mean loss over half an interval after the event minus the
trend before it, docs/hydra.md), how many of those the loss actually went down after, the same for
each run's first such event and for the later ones apart, and the final mean rank of the
attention and of the MLP projections and of the later half of the blocks. Writes ``<results>_events.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/quality/events.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.quality"

from benchmarks.common import write_result  # noqa: E402
from benchmarks.quality.methods import METHODS  # noqa: E402
from benchmarks.quality.pretrain import PretrainSettings  # noqa: E402
from benchmarks.quality.run import ROOT, QualitySettings, run_dir  # noqa: E402

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def settings_of(results: dict[str, Any]) -> QualitySettings:
    """The settings run.py recorded in ``results``."""
    s = dict(results["settings"])
    s["pretrain"] = PretrainSettings(**s["pretrain"])
    return QualitySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})


def run_key(results: dict[str, Any]) -> str:
    """The cache key run.py trained ``results``' runs under, from the settings it recorded."""
    return settings_of(results).run_key()


def _mean_rank(ranks: dict[str, int], types: tuple[str, ...]) -> float:
    return statistics.fmean(r for n, r in ranks.items() if n.rpartition(".")[2] in types)


def _late_half_rank(ranks: dict[str, int]) -> float:
    """Mean rank of the branches in the later half of the LLM's blocks (uniform LoRA: its rank)."""
    blocks = {n: int(n.split("layers.")[1].split(".")[0]) for n in ranks if "layers." in n}
    half = (max(blocks.values()) + 1) / 2
    return statistics.fmean(ranks[n] for n, b in blocks.items() if b >= half)


def summarize_events(results: dict[str, Any], work: Path) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    key = run_key(results)
    for run in results["runs"]:
        if METHODS[run["method"]][1].get("schedule", "fixed") == "fixed":
            continue  # no rank schedule, no history
        path = run_dir(work, key, run["task"], run["method"], run["hyper"], run["seed"]) / "rank_history.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: rerun the benchmark into --work {work}")
        history = json.loads(path.read_text())
        moved = [e for e in history["events"] if e["kind"] == "dynamic" and e["moves"]]
        seen = [e for e in moved if e["observed_loss_change"] is not None]
        final = history["events"][-1]["ranks"]
        entry = out.setdefault(run["method"], {}).setdefault(run["task"], {
            "runs": 0, "moves": 0, "predicted": [], "observed": [], "first": [], "later": [],
            "attention_rank": [], "mlp_rank": [], "late_rank": []})
        entry["runs"] += 1
        entry["moves"] += sum(len(e["moves"]) for e in moved)
        entry["predicted"] += [e["predicted_loss_change"] for e in seen]
        entry["observed"] += [e["observed_loss_change"] for e in seen]
        entry["first"] += [e["observed_loss_change"] for e in seen[:1]]
        entry["later"] += [e["observed_loss_change"] for e in seen[1:]]
        entry["attention_rank"].append(_mean_rank(final, ATTENTION))
        entry["mlp_rank"].append(_mean_rank(final, MLP))
        entry["late_rank"].append(_late_half_rank(final))
    for per_task in out.values():
        for task, e in per_task.items():
            n = len(e["observed"])
            per_task[task] = {
                "runs": e["runs"], "moves_per_run": e["moves"] / e["runs"], "events_observed": n,
                "predicted_mean": statistics.fmean(e["predicted"]) if n else None,
                "observed_mean": statistics.fmean(e["observed"]) if n else None,
                "observed_decreases": sum(o < 0 for o in e["observed"]),
                # the first move comes while the loss still falls fast, where the observation's
                # linear trend is least reliable: it is reported apart from the later ones
                "first_observed_mean": statistics.fmean(e["first"]) if e["first"] else None,
                "later_events": len(e["later"]),
                "later_observed_mean": statistics.fmean(e["later"]) if e["later"] else None,
                "later_observed_se": statistics.stdev(e["later"]) / len(e["later"]) ** 0.5
                if len(e["later"]) > 1 else None,
                "later_decreases": sum(o < 0 for o in e["later"]),
                "attention_rank_mean": statistics.fmean(e["attention_rank"]),
                "mlp_rank_mean": statistics.fmean(e["mlp_rank"]),
                "late_half_rank_mean": statistics.fmean(e["late_rank"]),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a quality benchmark results JSON")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "quality", help="the run cache it was made in")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    events = summarize_events(results, args.work)
    if not events:
        print(f"{args.results} has no scheduled runs with a rank history", file=sys.stderr)
        return 1
    for method, per_task in events.items():
        for task, e in per_task.items():
            print(f"{method:<14} {task:<10} moves/run {e['moves_per_run']:5.1f}  events {e['events_observed']:3d}  "
                  f"predicted {e['predicted_mean'] or 0:+.3f}  observed {e['observed_mean'] or 0:+.3f}  "
                  f"decreases {e['observed_decreases']}  rank attention {e['attention_rank_mean']:.1f} "
                  f"MLP {e['mlp_rank_mean']:.1f}")
    write_beside(args.results, "events", {"benchmark": "quality_events", "events": events})
    return 0


def write_beside(results: Path, suffix: str, record: dict[str, Any]) -> None:
    """Write ``record`` as ``<results>_<suffix>.json`` beside the results JSON it was computed from."""
    out = results.with_name(f"{results.stem}_{suffix}.json")
    write_result(out, {**record, "source": results.name})
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
