"""The performance model's observation where nothing moved: the control for HyDRA's events table.

    python benchmarks/quality/null_events.py docs/results/quality_quick.json

HyDRA judges a reallocation by the mean loss over half an interval after it minus a trend fitted to
the interval before and extrapolated (``--loss-trend``, docs/hydra.md). Early in a run the loss curve
bends, so that estimate can be far from zero with no move at all. This trains fixed LoRA on every
task of the results JSON (its chosen learning rate, the benchmark's settings, seeds 0..--seeds-1),
records every step's loss, and applies the same observation (the scheduler's own function) with
every trend at each step where ``--schedule hydra`` reallocates: the first event and the later ones
apart, as events.py reports HyDRA's. The trend whose observation sits nearest zero here is the one
that can tell a move's effect from the curve's bend; a move whose observed change sits at these
numbers did nothing measurable. Writes ``<results>_null_events.json`` beside the results, with the
loss curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/quality/null_events.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.quality"

from benchmarks.quality.events import settings_of, write_beside  # noqa: E402
from benchmarks.quality.methods import METHODS, train_config  # noqa: E402
from benchmarks.quality.pretrain import pretrained_model  # noqa: E402
from benchmarks.quality.run import ROOT, run_dir, task_data  # noqa: E402


def null_observations(results: dict[str, Any], work: Path, seeds: int) -> dict[str, dict[str, Any]]:
    """Per task: the observation with each loss trend at HyDRA's first event step and at its later ones, on
    fixed-LoRA loss curves (kept under ``curves``)."""
    import torch

    from mobilepeft.io import write_json
    from mobilepeft.schedule.scheduler import (
        interval,
        loss_slope_before,
        observed_loss_change,
        reallocation_steps,
    )
    from mobilepeft.schedule.settings import LOSS_TRENDS, ScheduleSettings
    from mobilepeft.train.trainer import Trainer

    torch.set_num_threads(2)
    settings = settings_of(results)
    base, _ = pretrained_model(work, settings.pretrain)
    hydra = ScheduleSettings(kind=METHODS["hydra"][1]["schedule"])
    every = interval(hydra, settings.steps)
    events = sorted(s + 1 for s in reallocation_steps(hydra, settings.steps, hydra.probe_steps))
    hyper = results["search"]["chosen"]["lora"] if "search" in results else {"lr": settings.lr, "knobs": {}}
    out: dict[str, dict[str, Any]] = {}
    for task in settings.tasks:
        data = task_data(work, settings, task)
        curves, slope_first, slope_later = [], [], []
        for seed in range(seeds):
            out_dir = run_dir(work, settings.run_key(), task, "lora-null", hyper, seed)
            losses_file = out_dir / "losses.json"
            if not losses_file.is_file():
                losses: list[tuple[int, float]] = []
                cfg = train_config("lora", model=base, data=data["train"], image_folder=data["folder"],
                                   output_dir=out_dir, seed=seed, steps=settings.steps, rank=settings.rank,
                                   lr=hyper["lr"], batch_size=settings.batch_size, ring_rank_pattern={})
                Trainer(cfg, progress=False,
                        callbacks=[lambda _t, done, record, into=losses: into.append((done - 1, record["loss"]))]).run()
                write_json(losses_file, losses)
            losses = [tuple(x) for x in json.loads(losses_file.read_text())]
            curves.append([round(v, 5) for _, v in losses])
            slopes = [loss_slope_before(losses, e, every) for e in events]
            slope_first += slopes[:1]
            slope_later += slopes[1:]
        trends = {}
        for trend in LOSS_TRENDS:
            seen = [[observed_loss_change(list(enumerate(c)), e, every, trend) for e in events] for c in curves]
            first = [s[0] for s in seen]
            later = [x for s in seen for x in s[1:]]
            trends[trend] = {"first_observed_mean": statistics.fmean(first),
                             "later_observed_mean": statistics.fmean(later),
                             "later_observed_se": statistics.stdev(later) / len(later) ** 0.5,
                             "later_observed_sd": statistics.stdev(later),
                             # the estimator's whole error where the truth is zero: bias and noise, every event
                             "rms": statistics.fmean(x * x for x in first + later) ** 0.5}
            print(f"{task:<10} {trend:<9} observed with no move: first event {trends[trend]['first_observed_mean']:+.3f}, "
                  f"later {trends[trend]['later_observed_mean']:+.3f} (sd {trends[trend]['later_observed_sd']:.3f})",
                  flush=True)
        out[task] = {"runs": seeds, "event_steps": events, "trends": trends, "curves": curves,
                     # the loss's fall per step before the events: the observation once evaluated its trend half a
                     # step late, which made every event look worse by half of this
                     "loss_slope_first": statistics.fmean(slope_first), "loss_slope_later": statistics.fmean(slope_later)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a quality benchmark results JSON (its settings and LoRA's choice)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "quality", help="the run cache it was made in")
    parser.add_argument("--seeds", type=int, default=2, help="fixed-LoRA runs per task")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds: at least 1, got {args.seeds}")
    results = json.loads(args.results.read_text())
    null = null_observations(results, args.work, args.seeds)
    write_beside(args.results, "null_events", {"benchmark": "quality_null_events", "null": null})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
