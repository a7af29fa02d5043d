"""Wall-time cost of HyDRA rank scheduling: ``--schedule hydra`` vs ``fixed`` at the same budget.

Both train the same model on the same data for the same steps through the real trainer
(``mobilepeft train`` without evaluation); runs alternate fixed, hydra, fixed, hydra, ... so
slow phases of a noisy machine hit both, and the ratio is the median over the pairs. The
schedule's own bookkeeping (statistics on watched steps, reallocations) is reported too, from
the timers the scheduler keeps.

    python benchmarks/schedule_overhead.py                  # tiny preset, 300 steps, 2 pairs

Prints one table and writes benchmarks/results/schedule_overhead.json. Target: ratio ≤ 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, environment, prepare, run_config, write_result

TARGET = 1.05


def train_once(model_dir: Path, data_dir: Path, out: Path, schedule: str, args: argparse.Namespace) -> dict:
    from mobilepeft.train.config import TrainConfig
    from mobilepeft.train.trainer import Trainer

    cfg = TrainConfig(model=str(model_dir), data=str(data_dir / "train.json"), image_folder=str(data_dir),
                      output_dir=str(out), schedule=schedule, rank=args.rank, alpha=2.0 * args.rank, lr=3e-3,
                      batch_size=args.batch_size, max_steps=args.steps, max_length=256, save_every=0, log_every=10,
                      seed=0)
    cfg.validate()
    trainer = Trainer(cfg, progress=False)
    t0 = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - t0
    row = {"wall_s": wall, "final_loss": result.final_loss}
    if trainer.ranker is not None:
        history = json.loads((out / "rank_history.json").read_text())
        row["schedule_seconds"] = trainer.ranker.seconds
        row["reallocations"] = sum(1 for e in history["events"] if e["kind"] != "initial")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny, the demo model)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=2, help="fixed/hydra pairs to run")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--output", type=Path, default=RESULTS / "schedule_overhead.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: dict[str, list[dict]] = {"fixed": [], "hydra": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir = prepare(Path(tmp), args.preset)
        train_once(model_dir, data_dir, Path(tmp) / "warmup", "fixed", argparse.Namespace(**{**vars(args), "steps": 5}))
        for i in range(args.pairs):
            for schedule in ("fixed", "hydra") if i % 2 == 0 else ("hydra", "fixed"):
                runs[schedule].append(train_once(model_dir, data_dir, Path(tmp) / f"{schedule}{i}", schedule, args))
                print(f"  pair {i + 1}: {schedule:<6} {runs[schedule][-1]['wall_s']:.1f} s", file=sys.stderr)
    ratios = [h["wall_s"] / f["wall_s"] for f, h in zip(runs["fixed"], runs["hydra"], strict=True)]
    ratio = statistics.median(ratios)
    sched = runs["hydra"][-1]["schedule_seconds"]
    fixed_wall = statistics.median(r["wall_s"] for r in runs["fixed"])
    result = {
        "benchmark": "schedule_overhead",
        "config": run_config(args),
        "environment": environment(),
        "runs": runs,
        "pair_ratios": ratios,
        "ratio_hydra_over_fixed": ratio,
        "schedule_seconds_share_of_fixed": (sched["statistics"] + sched["reallocation"]) / fixed_wall,
        "target": TARGET,
        "pass": ratio <= TARGET,
    }
    write_result(args.output, result)
    print(f"Schedule overhead, preset {args.preset}, {args.steps} steps, batch {args.batch_size}, rank {args.rank}, "
          f"{torch.get_num_threads()} threads, {args.pairs} alternating pairs")
    print(f"{'schedule':<10}{'median wall s':>15}{'final loss':>12}{'reallocations':>15}")
    for name, rows in runs.items():
        print(f"{name:<10}{statistics.median(r['wall_s'] for r in rows):>15.2f}"
              f"{statistics.median(r['final_loss'] for r in rows):>12.4f}{rows[-1].get('reallocations', 0):>15}")
    print(f"hydra / fixed wall time: {ratio:.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)}); the schedule's "
          f"own work: statistics {sched['statistics']:.2f} s + reallocation {sched['reallocation']:.2f} s "
          f"= {result['schedule_seconds_share_of_fixed']:.1%} of a fixed run")
    print(f"{'PASS' if result['pass'] else 'FAIL'} (target ≤ {TARGET}); wrote {args.output}")
    if not result["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
