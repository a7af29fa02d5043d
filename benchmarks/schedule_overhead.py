"""Wall-time cost of HyDRA rank scheduling: ``--schedule hydra`` vs ``fixed`` at the same budget.

Both train the same model on the same data for the same steps through the real trainer
(``mobilepeft train`` without evaluation). They run **in lockstep**: two threads, one per
schedule, pass a baton after every optimizer step, so exactly one computes at any time and
both see the same machine conditions step by step (on a shared 2-core machine whole-run timings
swing by ±10%, more than the effect measured). Each step's time is measured from taking the
baton to handing it back; it includes data loading, forward/backward, the optimizer, and the
schedule's watching and reallocation. The ratio of the summed step times is the overhead.
Both threads share torch's global RNG, so their losses differ from solo runs; timing does not.

    python benchmarks/schedule_overhead.py              # tiny preset (the demo model), 300 steps

Prints one table and writes docs/results/schedule_overhead.json. Target: ratio ≤ 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import RESULTS, environment, prepare, run_config, write_result

SCHEDULES = ("fixed", "hydra")
TARGET = 1.05


class Baton:
    """Strict alternation between named workers; a finished worker drops out of the rotation."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.order, self.turn, self.done = list(names), 0, set()
        self.cond = threading.Condition()

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name)

    def release(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.done.add(name)
            live = [n for n in self.order if n not in self.done]
            if live:
                i = self.turn
                while True:
                    i = (i + 1) % len(self.order)
                    if self.order[i] not in self.done:
                        break
                self.turn = i
            self.cond.notify_all()


def train_in_lockstep(model_dir: Path, data_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, dict]:
    from mobilepeft.train.config import TrainConfig
    from mobilepeft.train.trainer import Trainer

    baton = Baton(SCHEDULES)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def worker(schedule: str) -> None:
        cfg = TrainConfig.from_flat(dict(model=str(model_dir), data=str(data_dir / "train.json"), image_folder=str(data_dir),
                          output_dir=str(work / schedule), schedule=schedule, rank=args.rank, alpha=2.0 * args.rank,
                          lr=3e-3, batch_size=args.batch_size, max_steps=args.steps, max_length=256, save_every=0,
                          log_every=10, seed=0))
        cfg.validate()
        steps: list[float] = []
        clock = {"t": 0.0}

        def on_step(trainer, step, record) -> None:
            steps.append(time.perf_counter() - clock["t"])
            baton.release(schedule)
            baton.acquire(schedule)
            clock["t"] = time.perf_counter()

        trainer = Trainer(cfg, progress=False, callbacks=[on_step])
        baton.acquire(schedule)
        t0 = clock["t"] = time.perf_counter()
        try:
            result = trainer.run()
            total = time.perf_counter() - t0
            row = {"step_seconds_sum": sum(steps[1:]), "first_step_with_setup_s": steps[0], "run_s": total,
                   "median_step_s": statistics.median(steps[1:]), "final_loss": result.final_loss}
            if trainer.ranker is not None:
                events = json.loads((work / schedule / "rank_history.json").read_text())["events"]
                row["schedule_seconds"] = trainer.ranker.seconds
                row["allocations"] = sum(1 for e in events if e["kind"] != "initial")
            results[schedule] = row
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
        finally:
            baton.release(schedule, finished=True)

    threads = [threading.Thread(target=worker, args=(s,)) for s in SCHEDULES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny, the demo model)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--output", type=Path, default=RESULTS / "schedule_overhead.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir = prepare(Path(tmp), args.preset)
        runs = train_in_lockstep(model_dir, data_dir, Path(tmp), args)
    fixed, hydra = runs["fixed"], runs["hydra"]
    ratio = hydra["step_seconds_sum"] / fixed["step_seconds_sum"]
    sched = hydra["schedule_seconds"]
    own = (sched["statistics"] + sched["reallocation"]) / fixed["step_seconds_sum"]
    result = {
        "benchmark": "schedule_overhead",
        "config": run_config(args),
        "environment": environment(),
        "runs": runs,
        "ratio_hydra_over_fixed": ratio,
        "schedule_own_work_share_of_fixed": own,
        "target": TARGET,
        "pass": ratio <= TARGET,
    }
    write_result(args.output, result)
    print(f"Schedule overhead, preset {args.preset}, {args.steps} steps, batch {args.batch_size}, rank {args.rank}, "
          f"{torch.get_num_threads()} threads, fixed and hydra in lockstep")
    print(f"{'schedule':<10}{'sum of steps s':>16}{'median step ms':>16}{'allocations':>13}{'final loss':>12}")
    for name, r in runs.items():
        print(f"{name:<10}{r['step_seconds_sum']:>16.2f}{r['median_step_s'] * 1e3:>16.1f}"
              f"{r.get('allocations', 0):>13}{r['final_loss']:>12.4f}")
    print(f"hydra / fixed: {ratio:.3f}; the schedule's own work (statistics {sched['statistics']:.2f} s, "
          f"reallocation {sched['reallocation']:.2f} s) = {own:.1%} of the fixed run's step time")
    print(f"{'PASS' if result['pass'] else 'FAIL'} (target ≤ {TARGET}); wrote {args.output}")
    if not result["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
