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
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/quality/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.quality"

from benchmarks.common import write_result  # noqa: E402
from benchmarks.quality import tasks  # noqa: E402
from benchmarks.quality.methods import (  # noqa: E402
    KNOBS,
    METHODS,
    QUICK,
    SCALE_GRID,
    SCALE_RANGE,
    SCALED,
    SEARCH_AS,
    TABLE,
    VARIANTS,
    adapter_budget,
    default_scale,
    match_ring_ranks,
    train_config,
)
from benchmarks.quality.pretrain import PretrainSettings, pretrained_model  # noqa: E402
from benchmarks.quality.report import knob_text, render_markdown, render_plot, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TASKS = {
    "digits": ("Digits (real scans)", tasks.write_digits_task),
    "relations": ("Relations (compositional)", tasks.write_relations_task),
    "codes": ("Codes (new associations)", tasks.write_codes_task),
}


@dataclass(frozen=True)
class QualitySettings:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = TABLE
    tasks: tuple[str, ...] = tuple(TASKS)
    rank: int = 8
    steps: int = 300
    batch_size: int = 16
    #: hyperparameters per method chosen on the validation split (``search``), or ``lr``/``full_lr`` for all
    search: bool = True
    lr_grid: tuple[float, ...] = (1e-3, 2e-3, 4e-3, 8e-3)
    full_lr_grid: tuple[float, ...] = (4e-4, 8e-4, 1.5e-3, 3e-3)
    #: adapter scales s searched for every LoRA-family method (empty: every method keeps its default scale)
    scale_grid: tuple[float, ...] = SCALE_GRID
    search_seed: int = 0
    #: validation runs per search candidate and task (seeds search_seed, search_seed + 1, ...), averaged
    search_seeds: int = 2
    lr: float = 3e-3
    full_lr: float = 1.5e-3
    temperature: float = 0.5  # the schedules' sensitivity skew (HyDRA's default)
    n_train: int = 3000
    n_val: int = 450
    n_test: int = 450
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    def run_key(self) -> str:
        """What a cached run's result depends on: every setting that reaches its training and the task generators'
        code. A run's own rate and knobs name its folder (``run_dir``), so the search's grids and seeds, the
        no-search rates and which seeds, methods and tasks were asked for are not in the key: a wider grid or a
        second search seed reuses every run it shares with an earlier search."""
        values = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_RUN_KEY}
        text = json.dumps(values, sort_keys=True) + data_version()
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: the quick table's search averages fewer seeds than the full one's so that it stays within the hour
QUICK_SEARCH_SEEDS = 1
_NOT_IN_RUN_KEY = ("seeds", "methods", "tasks", "search", "lr_grid", "full_lr_grid", "scale_grid", "search_seed",
                   "search_seeds", "lr", "full_lr")


def data_version() -> str:
    """Changes whenever the task generators do (their data is cached under it)."""
    return hashlib.sha256(Path(tasks.__file__).read_bytes()).hexdigest()[:8]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "quality", help="cache of models, data, runs")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (one thread each)")
    parser.add_argument("--seeds", type=int, default=len(QualitySettings.seeds),
                        help="seeds per method and task on the test split (>= 3 for a std)")
    parser.add_argument("--methods", default=None,
                        help="comma separated, from " + ",".join(METHODS) + f" (default: all but {', '.join(VARIANTS)}; "
                             f"with --quick: {','.join(QUICK)})")
    parser.add_argument("--quick", action="store_true",
                        help=f"the subset that fits an hour on 2 cores: {', '.join(QUICK)} on every task, same protocol; "
                             "writes docs/results/quality_quick.json and docs/results-quick.md unless --results/--markdown")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma separated subset of " + ",".join(TASKS))
    parser.add_argument("--rank", type=int, default=QualitySettings.rank,
                        help="the budget: LoRA at this rank on every LLM linear (AdaRing's ring ranks are matched to it)")
    parser.add_argument("--steps", type=int, default=QualitySettings.steps, help="fine-tuning steps per run")
    parser.add_argument("--temperature", type=float, default=QualitySettings.temperature,
                        help="the schedules' temperature (0 = fixed LoRA); for ablations")
    parser.add_argument("--n-train", type=int, default=QualitySettings.n_train, help="training questions per task")
    parser.add_argument("--base-seed", type=int, default=PretrainSettings.seed,
                        help="seed of the pretrained base (its initialisation and corpus order): another value is "
                             "another base, pretrained once and cached, so a comparison can be repeated on it")
    parser.add_argument("--no-search", action="store_true",
                        help="skip the search on the validation split: every adapter method trains at --lr, full "
                             "fine-tuning at --full-lr")
    parser.add_argument("--search-seeds", type=int, default=None,
                        help="validation runs per search candidate and task, averaged (seeds 0, 1, ...): more make the "
                             f"choice less a matter of one seed's luck (default {QualitySettings.search_seeds}; "
                             f"with --quick {QUICK_SEARCH_SEEDS}, to stay within the hour)")
    parser.add_argument("--lr-grid", default=",".join(f"{x:g}" for x in QualitySettings.lr_grid),
                        help="learning rates searched for the adapter methods")
    parser.add_argument("--full-lr-grid", default=",".join(f"{x:g}" for x in QualitySettings.full_lr_grid),
                        help="learning rates searched for full fine-tuning")
    parser.add_argument("--scale-grid", default=None,
                        help="adapter scales s (LoRA's alpha / r) searched for every LoRA-family method after its knob, "
                             "grown by doubling while the top wins; '' keeps every method at its default scale "
                             f"(default {','.join(f'{x:g}' for x in SCALE_GRID)}; with --quick '', to stay within the hour)")
    parser.add_argument("--lr", type=float, default=QualitySettings.lr, help="with --no-search: the adapter methods' rate")
    parser.add_argument("--full-lr", type=float, default=QualitySettings.full_lr,
                        help="with --no-search: full fine-tuning's rate")
    parser.add_argument("--results", type=Path, default=None, help="default docs/results/quality.json")
    parser.add_argument("--markdown", type=Path, default=None, help="default docs/results.md")
    parser.add_argument("--render-only", action="store_true",
                        help="only re-render --markdown and the plot from the existing --results JSON")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    args.results = args.results or DOCS / "results" / f"quality{suffix}.json"
    args.markdown = args.markdown or DOCS / f"results{suffix.replace('_', '-')}.md"
    args.methods = args.methods or ",".join(QUICK if args.quick else TABLE)
    if args.search_seeds is None:
        args.search_seeds = QUICK_SEARCH_SEEDS if args.quick else QualitySettings.search_seeds
    if args.scale_grid is None:
        args.scale_grid = "" if args.quick else ",".join(f"{x:g}" for x in SCALE_GRID)
    if args.render_only:
        _render(json.loads(args.results.read_text()), args.results, args.markdown)
        return 0
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    task_names = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    for name, known in (("method", METHODS), ("task", TASKS)):
        for value in methods if name == "method" else task_names:
            if value not in known:
                parser.error(f"unknown {name} {value!r}; choose from {', '.join(known)}")
    grids = {}
    for flag in ("lr_grid", "full_lr_grid", "scale_grid"):  # only the scale grid may be empty
        name, may_be_empty = "--" + flag.replace("_", "-"), flag == "scale_grid"
        try:
            grids[flag] = tuple(float(x) for x in getattr(args, flag).split(",") if x.strip())
        except ValueError:
            parser.error(f"{name}: comma separated numbers{' or empty' if may_be_empty else ''}, "
                         f"got {getattr(args, flag)!r}")
        if (not grids[flag] and not may_be_empty) or any(x <= 0 for x in grids[flag]):
            parser.error(f"{name}: {'' if may_be_empty else 'at least one value, '}every value > 0")
    for flag in ("rank", "search_seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: at least 1, got {getattr(args, flag)}")
    settings = QualitySettings(seeds=tuple(range(args.seeds)), methods=methods, tasks=task_names, steps=args.steps,
                               rank=args.rank, search_seeds=args.search_seeds,
                               search=not args.no_search, **grids, lr=args.lr, full_lr=args.full_lr,
                               n_train=args.n_train, temperature=args.temperature,
                               pretrain=PretrainSettings(seed=args.base_seed))
    t0 = time.perf_counter()
    results = run(settings, args.work, workers=args.workers)
    results["wall_seconds"] = time.perf_counter() - t0
    write_result(args.results, results)
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
    """Pretrain (cached), write the tasks, search each method's hyperparameters on the validation split
    (unless ``settings.search`` is off), then train every method x task x seed with its chosen settings
    and score it on the test split. Every run is cached by what it depends on."""
    import torch

    from mobilepeft.evaluation.eval_set import load_eval_set
    from mobilepeft.evaluation.vqa import evaluate_answers
    from mobilepeft.loading import load_vlm

    torch.set_num_threads(max(1, workers))
    work.mkdir(parents=True, exist_ok=True)
    base, pretrain_record = pretrained_model(work, settings.pretrain)
    data = {name: task_data(work, settings, name) for name in settings.tasks}

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

    key = settings.run_key()

    def job(task: str, method: str, seed: int, hyper: dict[str, Any]) -> dict[str, Any]:
        out = run_dir(work, key, task, method, hyper, seed)
        cfg = train_config(method, model=base, data=data[task]["train"], image_folder=data[task]["folder"],
                           output_dir=out, seed=seed, steps=settings.steps, rank=settings.rank, lr=hyper["lr"],
                           batch_size=settings.batch_size, ring_rank_pattern=pattern,
                           temperature=settings.temperature, knobs=hyper["knobs"])
        return {"task": task, "method": method, "seed": seed, "hyper": hyper, "config": cfg.to_flat(),
                "val": str(data[task]["val"]), "test": str(data[task]["test"]), "folder": str(data[task]["folder"])}

    ledger = RunLedger()
    if settings.search:
        search = _search(settings, job, workers, ledger,
                         scales={m: default_scale(m, settings.rank, pattern) for m in SCALED})
        chosen = search["chosen"]
    else:
        search = None
        chosen = {m: {"lr": settings.full_lr if m == "full" else settings.lr, "knobs": {}} for m in settings.methods}
    print("test runs with the chosen settings:")
    runs = _execute([job(t, m, seed, chosen[m]) for t in settings.tasks for m in settings.methods
                     for seed in settings.seeds], workers, ledger, split="test")
    runs.sort(key=lambda r: (settings.tasks.index(r["task"]), settings.methods.index(r["method"]), r["seed"]))
    chance = {name: _chance(data[name]["test"]) for name in settings.tasks}
    results = {
        "benchmark": "quality",
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
        **({"search": search} if search else {}),
        "runs": runs,
        "runs_trained": ledger.trained,
        "runs_cached": ledger.cached,
        "runs_distinct": len(ledger.train_seconds),
        "runs_train_seconds": sum(ledger.train_seconds.values()),
    }
    results["summary"] = summarize(results)
    return results


def task_data(work: Path, settings: QualitySettings, name: str) -> dict[str, Path]:
    """A task's splits (``train``, ``val``, ``test`` JSON) and image ``folder``, written once per data version."""
    folder = work / "data" / f"{name}-{settings.n_train}-{settings.n_val}-{settings.n_test}-{data_version()}"
    if not (folder / "test.json").is_file():
        TASKS[name][1](folder, n_train=settings.n_train, n_val=settings.n_val, n_test=settings.n_test)
    return {split: folder / f"{split}.json" for split in ("train", "val", "test")} | {"folder": folder}


def run_dir(work: Path, key: str, task: str, method: str, hyper: dict[str, Any], seed: int) -> Path:
    """The cache folder a run trains in, under its settings' ``run_key``."""
    return work / "runs" / key / task / method / _tag(hyper) / f"seed{seed}"


def _tag(hyper: dict[str, Any]) -> str:
    """A run's folder name from its searched settings: ``lr0.002``, ``lr0.002-temperature0.25``."""
    knobs = "".join(f"-{k}{v}" for k, v in sorted(hyper["knobs"].items()))
    return f"lr{hyper['lr']:g}{knobs}"


@dataclass
class RunLedger:
    """What a table's runs cost. ``trained`` and ``cached`` count jobs (a chosen search run is its seed's test run
    too, so it is read back a second time); ``train_seconds`` holds each distinct run's training time, the
    time it took when it was trained, so the page states the table's cost from scratch however much the cache held."""

    trained: int = 0
    cached: int = 0
    train_seconds: dict[tuple[str, str, str, int], float] = field(default_factory=dict)

    def add(self, runs: list[dict[str, Any]]) -> None:
        for r in runs:
            self.train_seconds[(r["task"], r["method"], _tag(r["hyper"]), r["seed"])] = r["train_seconds"]


def _search(settings: QualitySettings, job, workers: int, ledger: RunLedger, *,
            scales: dict[str, float]) -> dict[str, Any]:
    """Each method's learning rate over its grid (knob and scale at their defaults), then its knob's other values at
    the best rate, then the adapter scale over ``settings.scale_grid`` at the best of those (``scales``: each
    method's default s; the grid grows by doubling or halving while its edge wins), then, where a non-default knob
    or scale won, the other rates again at it; ``search_seeds`` seeds, every task, scored on the validation split only. The choice
    maximises the mean validation accuracy over tasks and seeds (ties go to the earlier candidate: the default knob
    and scale, the lower rate). Ablations take the choice of the method they ablate (``SEARCH_AS``)."""
    searched = list(dict.fromkeys(SEARCH_AS.get(m, m) for m in settings.methods))
    seeds = [settings.search_seed + k for k in range(settings.search_seeds)]
    found: dict[str, list[dict[str, Any]]] = {m: [] for m in searched}

    def rates(m: str) -> tuple[float, ...]:
        return settings.full_lr_grid if m == "full" else settings.lr_grid

    def best(m: str) -> dict[str, Any]:
        return max(found[m], key=lambda c: c["val_accuracy_mean"])

    def stage(what: str, hypers: dict[str, list[dict[str, Any]]]) -> None:
        """Train and score ``hypers`` on the validation split and add them to ``found``."""
        if not hypers:
            return
        print(f"search on the validation split{what}")
        jobs = [job(t, m, seed, h) for m, hs in hypers.items() for h in hs for t in settings.tasks for seed in seeds]
        # runs come back cached first, then in the order they finish: index the scores by seed
        score = {(r["method"], _tag(r["hyper"]), r["task"], r["seed"]): r["val_scores"]["overall"]["exact_match"]
                 for r in _execute(jobs, workers, ledger, split="val")}
        for m, hs in hypers.items():
            for h in hs:
                by_seed = {t: [score[(m, _tag(h), t, seed)] for seed in seeds] for t in settings.tasks}
                per_task = {t: statistics.fmean(v) for t, v in by_seed.items()}
                found[m].append({**h, "val_accuracy": per_task, "val_accuracy_mean": statistics.fmean(per_task.values()),
                                 **({"val_accuracy_by_seed": by_seed} if len(seeds) > 1 else {})})

    stage(f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}): learning rate",
          {m: [{"lr": lr, "knobs": {}} for lr in rates(m)] for m in searched})
    knobbed = [m for m in searched if m in KNOBS]
    stage(": " + ", ".join(f"{m} {KNOBS[m][0]}" for m in knobbed),
          {m: [{"lr": best(m)["lr"], "knobs": {KNOBS[m][0]: v}} for v in KNOBS[m][1][1:]] for m in knobbed})

    def scale(m: str) -> float:
        return scales[m] * best(m)["knobs"].get("alpha_factor", 1.0)

    def at_scales(m: str, values: list[float]) -> list[dict[str, Any]]:
        return [{"lr": best(m)["lr"], "knobs": {**best(m)["knobs"], "alpha_factor": s / scales[m]}} for s in values]

    tried = {m: [scales[m]] for m in searched if m in scales and settings.scale_grid}
    todo = {m: v for m in tried if (v := [s for s in settings.scale_grid if s != scales[m]])}
    while todo:
        stage(": scale s = " + "; ".join(f"{m} {', '.join(f'{s:g}' for s in v)}" for m, v in todo.items()),
              {m: at_scales(m, v) for m, v in todo.items()})
        for m, values in todo.items():
            tried[m] += values
        todo = {m: [scale(m) * 2] for m in tried if scale(m) == max(tried[m]) and scale(m) * 2 <= SCALE_RANGE[1]} | {
                m: [scale(m) / 2] for m in tried if scale(m) == min(tried[m]) and scale(m) / 2 >= SCALE_RANGE[0]}
    # A knob or a scale that changes the size of the update moves the best rate with it: where a non-default value
    # won, the other rates are tried again at it.
    rate_again = {m: best(m)["knobs"] for m in searched if best(m)["knobs"]}
    stage(": the rate again at " + "; ".join(f"{m} {knob_text(knobs, scales.get(m))}" for m, knobs in rate_again.items()),
          {m: [{"lr": lr, "knobs": knobs} for lr in rates(m) if lr != best(m)["lr"]] for m, knobs in rate_again.items()})
    chosen = {m: {k: best(SEARCH_AS.get(m, m))[k] for k in ("lr", "knobs")} for m in settings.methods}
    return {"seed": seeds[0], "seeds": seeds, "split": "val", "lr_grid": list(settings.lr_grid),
            "full_lr_grid": list(settings.full_lr_grid),
            "knobs": {m: {"key": KNOBS[m][0], "values": list(KNOBS[m][1])} for m in knobbed},
            **({"scale_grid": list(settings.scale_grid),
                "scales": {m: {"default": scales[m], "tried": sorted(v)} for m, v in tried.items()}} if tried else {}),
            "rate_again": rate_again,
            "as": {m: SEARCH_AS[m] for m in settings.methods if m in SEARCH_AS},
            "candidates": found, "chosen": chosen}


def _execute(jobs: list[dict[str, Any]], workers: int, ledger: RunLedger, *,
             split: str) -> list[dict[str, Any]]:
    """Train and score ``jobs`` (cached ones are read back), two at a time by default, entering each in ``ledger``;
    ``split`` only names the score printed as runs finish."""
    runs, todo = [], []
    for one in jobs:
        folder = Path(one["config"]["output_dir"])
        result = folder / "quality_result.json"
        if result.is_file():
            runs.append(json.loads(result.read_text()))
            continue
        if folder.exists():  # a run stopped before its result was written: `mobilepeft train` would refuse the folder
            print(f"restarting the interrupted run in {folder}")
            shutil.rmtree(folder)
        todo.append(one)
    print(f"{len(jobs)} runs: {len(jobs) - len(todo)} cached, {len(todo)} to train on {workers} worker(s)")
    ledger.trained += len(todo)
    ledger.cached += len(jobs) - len(todo)
    ledger.add(runs)
    if not todo:
        return runs
    with contextlib.ExitStack() as stack:
        if workers == 1:
            done = map(_train_and_score, todo)
        else:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init))
            done = pool.imap_unordered(_train_and_score, todo)
        for k, result in enumerate(done, start=1):
            runs.append(result)
            ledger.add([result])
            score = result["val_scores" if split == "val" else "scores"]["overall"]["exact_match"]
            print(f"[{k}/{len(todo)}] {result['task']:<10} {result['method']:<13} {_tag(result['hyper']):<28} "
                  f"seed {result['seed']}: {split} accuracy {score:.1%}  ({result['train_seconds']:.0f} s)", flush=True)
    return runs


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
    scores = {split: evaluate_answers(model, load_eval_set(job[split], job["folder"]), job["folder"], batch_size=50,
                                      max_new_tokens=4).to_dict() for split in ("val", "test")}
    # The search reads only val_scores; a run's test score enters the results only as a run of the chosen settings.
    result = {"task": job["task"], "method": job["method"], "seed": job["seed"], "hyper": job["hyper"],
              "train_seconds": seconds, "steps": trained.steps, "final_train_loss": trained.final_loss,
              "trainable_parameters": trainable, "val_scores": scores["val"], "scores": scores["test"]}
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
