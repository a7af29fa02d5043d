"""Quality benchmark: every adapter method side by side at an equal trainable-parameter budget.

    make bench-quality          # = python -m benchmarks.quality.run

Pretrains (once, cached) a tiny MobileVLM from scratch, then fine-tunes it on each downstream
task with every method over several seeds, two runs at a time on one thread each, and scores
each run with ``mobilepeft eval``'s code on the held-out test set. Writes
``docs/results/quality.json`` (every raw number), ``docs/results.md`` (the table, rendered from
that JSON) and ``docs/results/quality.png``. Finished runs are cached by their settings, so an
interrupted benchmark continues where it stopped. See benchmarks/quality/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/quality/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.quality"

from benchmarks.quality import tasks  # noqa: E402
from benchmarks.quality.methods import METHODS, adapter_budget, match_ring_ranks, train_config  # noqa: E402
from benchmarks.quality.pretrain import PretrainSettings, pretrained_model  # noqa: E402
from benchmarks.quality.report import render_markdown, render_plot, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TASKS = {
    "digits": ("Digits (real scans)", tasks.write_digits_task),
    "relations": ("Relations (compositional)", tasks.write_relations_task),
}


@dataclass(frozen=True)
class QualitySettings:
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    tasks: tuple[str, ...] = tuple(TASKS)
    rank: int = 8
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    full_lr: float = 1.5e-3
    temperature: float = 0.5  # the schedules' sensitivity skew (HyDRA's default)
    n_train: int = 3000
    n_test: int = 450
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    def run_key(self) -> str:
        """What a cached run depends on (not which seeds/methods/tasks were asked for): every
        setting and the task generators' code."""
        values = {k: v for k, v in asdict(self).items() if k not in ("seeds", "methods", "tasks")}
        text = json.dumps(values, sort_keys=True) + data_version()
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def data_version() -> str:
    """Changes whenever the task generators do (their data is cached under it)."""
    return hashlib.sha256(Path(tasks.__file__).read_bytes()).hexdigest()[:8]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "quality", help="cache of models, data, runs")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (one thread each)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method and task (>= 3 for a std)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma separated subset of " + ",".join(METHODS))
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma separated subset of " + ",".join(TASKS))
    parser.add_argument("--steps", type=int, default=QualitySettings.steps, help="fine-tuning steps per run")
    parser.add_argument("--temperature", type=float, default=QualitySettings.temperature,
                        help="the schedules' temperature (0 = fixed LoRA); for ablations")
    parser.add_argument("--n-train", type=int, default=QualitySettings.n_train, help="training questions per task")
    parser.add_argument("--lr", type=float, default=QualitySettings.lr, help="learning rate of the adapter methods")
    parser.add_argument("--full-lr", type=float, default=QualitySettings.full_lr, help="learning rate of full fine-tuning")
    parser.add_argument("--results", type=Path, default=DOCS / "results" / "quality.json")
    parser.add_argument("--markdown", type=Path, default=DOCS / "results.md")
    parser.add_argument("--render-only", action="store_true",
                        help="only re-render --markdown and the plot from the existing --results JSON")
    args = parser.parse_args(argv)
    if args.render_only:
        _render(json.loads(args.results.read_text()), args.results, args.markdown)
        return 0
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    task_names = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    for name, known in (("method", METHODS), ("task", TASKS)):
        for value in methods if name == "method" else task_names:
            if value not in known:
                parser.error(f"unknown {name} {value!r}; choose from {', '.join(known)}")
    settings = QualitySettings(seeds=tuple(range(args.seeds)), methods=methods, tasks=task_names, steps=args.steps,
                               lr=args.lr, full_lr=args.full_lr, n_train=args.n_train,
                               temperature=args.temperature)
    t0 = time.perf_counter()
    results = run(settings, args.work, workers=args.workers)
    results["wall_seconds"] = time.perf_counter() - t0

    from mobilepeft.io import write_json

    write_json(args.results, results)
    _render(results, args.results, args.markdown)
    print(f"finished in {results['wall_seconds'] / 60:.1f} min")
    return 0


def _render(results: dict[str, Any], results_path: Path, markdown: Path) -> None:
    from mobilepeft.io import write_text

    plot = results_path.with_suffix(".png")
    render_plot(results, plot)
    page = render_markdown(results, json_link=_link(results_path, markdown), png_link=_link(plot, markdown))
    write_text(markdown, page)
    print(page.split("## Differences")[0])
    print(f"wrote {results_path}, {plot}, {markdown}")


def _link(target: Path, page: Path) -> str:
    return os.path.relpath(target.resolve(), page.resolve().parent)


def run(settings: QualitySettings, work: Path, *, workers: int = 2) -> dict[str, Any]:
    import torch

    from mobilepeft.evaluation.eval_set import load_eval_set
    from mobilepeft.evaluation.vqa import evaluate_answers
    from mobilepeft.loading import load_vlm

    torch.set_num_threads(max(1, workers))
    work.mkdir(parents=True, exist_ok=True)
    base, pretrain_record = pretrained_model(work, settings.pretrain)
    data: dict[str, dict[str, Path]] = {}
    for name in settings.tasks:
        folder = work / "data" / f"{name}-{settings.n_train}-{settings.n_test}-{data_version()}"
        if not (folder / "test.json").is_file():
            TASKS[name][1](folder, n_train=settings.n_train, n_test=settings.n_test)
        data[name] = {"train": folder / "train.json", "test": folder / "test.json", "folder": folder}

    pattern, ring_params, lora_params = match_ring_ranks(base, settings.rank)
    budgets = {}
    for m in settings.methods:
        overrides = {**METHODS[m][1], **({"ring_rank_pattern": pattern} if m == "adaring" else {})}
        adapter = None if m == "full" else adapter_budget(base, overrides, settings.rank)
        budgets[m] = {"adapter_parameters": adapter}
    print(f"budget: LoRA rank {settings.rank} = {lora_params:,} adapter parameters; AdaRing ring ranks "
          f"{pattern} = {ring_params:,} ({ring_params / lora_params - 1:+.1%})")
    for m, b in budgets.items():
        n = b["adapter_parameters"]
        print(f"  {m:<13} {'every LLM weight' if n is None else f'{n:,} adapter parameters'}")

    # Before fine-tuning: the pretrained model on each task (how far the tasks are from pretraining).
    zero_shot = {}
    model = load_vlm(base)
    for name in settings.tasks:
        items = load_eval_set(data[name]["test"], data[name]["folder"])
        zero_shot[name] = evaluate_answers(model, items, data[name]["folder"], batch_size=50, max_new_tokens=4).to_dict()
    del model

    jobs = []
    for name in settings.tasks:
        for m in settings.methods:
            for seed in settings.seeds:
                out = work / "runs" / settings.run_key() / name / m / f"seed{seed}"
                cfg = train_config(m, model=base, data=data[name]["train"], image_folder=data[name]["folder"],
                                   output_dir=out, seed=seed, steps=settings.steps, rank=settings.rank,
                                   lr=settings.lr, full_lr=settings.full_lr, batch_size=settings.batch_size,
                                   ring_rank_pattern=pattern, temperature=settings.temperature)
                jobs.append({"task": name, "method": m, "seed": seed, "config": cfg.to_flat(),
                             "test": str(data[name]["test"]), "folder": str(data[name]["folder"])})
    runs = []
    todo = []
    for job in jobs:
        cached = Path(job["config"]["output_dir"]) / "quality_result.json"
        if cached.is_file():
            runs.append(json.loads(cached.read_text()))
        else:
            todo.append(job)
    print(f"{len(jobs)} runs: {len(jobs) - len(todo)} cached, {len(todo)} to train on {workers} worker(s)")
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            for k, result in enumerate(pool.imap_unordered(_train_and_score, todo), start=1):
                runs.append(result)
                print(f"[{k}/{len(todo)}] {result['task']:<10} {result['method']:<13} seed {result['seed']}: "
                      f"accuracy {result['scores']['overall']['exact_match']:.1%}  "
                      f"({result['train_seconds']:.0f} s)", flush=True)
    runs.sort(key=lambda r: (settings.tasks.index(r["task"]), settings.methods.index(r["method"]), r["seed"]))
    chance = {name: _chance(data[name]["test"]) for name in settings.tasks}
    results = {
        "benchmark": "quality",
        "command": "make bench-quality",
        "environment": {"torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
                        "workers": workers, "threads_per_worker": 1},
        "settings": asdict(settings),
        "task_labels": {n: TASKS[n][0] for n in settings.tasks},
        "method_labels": {m: METHODS[m][0] for m in settings.methods},
        "pretrain": pretrain_record,
        "budget": {"lora_rank": settings.rank, "lora_parameters": lora_params, "adaring_ring_ranks": pattern,
                   "adaring_parameters": ring_params, "methods": budgets},
        "chance": chance,
        "zero_shot": zero_shot,
        "runs": runs,
    }
    results["summary"] = summarize(results)
    return results


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _train_and_score(job: dict[str, Any]) -> dict[str, Any]:
    from mobilepeft.evaluation.eval_set import load_eval_set
    from mobilepeft.evaluation.vqa import evaluate_answers
    from mobilepeft.io import write_json
    from mobilepeft.train.config import TrainConfig
    from mobilepeft.train.trainer import Trainer

    cfg = TrainConfig.from_flat(job["config"])
    cfg.validate()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    trained = trainer.run()
    seconds = time.perf_counter() - t0
    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    items = load_eval_set(job["test"], job["folder"])
    report = evaluate_answers(model, items, job["folder"], batch_size=50, max_new_tokens=4)
    result = {"task": job["task"], "method": job["method"], "seed": job["seed"], "train_seconds": seconds,
              "steps": trained.steps, "final_train_loss": trained.final_loss, "trainable_parameters": trainable,
              "scores": report.to_dict()}
    if (Path(cfg.output.dir) / "rank_history.json").is_file():
        events = json.loads((Path(cfg.output.dir) / "rank_history.json").read_text())["events"]
        ranks = list(events[-1]["ranks"].values())
        result["final_ranks"] = {"min": min(ranks), "max": max(ranks), "mean": statistics.fmean(ranks)}
    write_json(Path(cfg.output.dir) / "quality_result.json", result)
    return result


def _chance(test_json: Path) -> float:
    records = json.loads(test_json.read_text())
    return statistics.fmean(1.0 / len(tasks.ANSWERS[r["question_type"]]) for r in records)


if __name__ == "__main__":
    raise SystemExit(main())
