"""What every benchmark here shares: inputs, the training step, interleaved timing, memory probes,
and where results go.

Timing interleaves the variants step by step in one process (order rotating each round) so the
machine's noise hits all of them alike; ratios use medians. Memory is measured in a fresh
subprocess per variant: the peak RSS of the whole process and its growth over the training
steps alone (what an adapter implementation controls).

Every script writes its result with :func:`write_result` to ``docs/results/<name>.json`` (committed;
the figures in README.md and docs/*.md are checked against these files by tests/test_doc_figures.py),
with a ``meta`` block saying which code, machine and package versions produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_STARTED = time.monotonic()
_LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
ROOT = Path(__file__).resolve().parents[1]
#: Where every benchmark writes its JSON (committed; figures in the docs are checked against it).
RESULTS = ROOT / "docs" / "results"
#: Packages whose versions a result records (those installed).
PACKAGES = ("torch", "executorch", "torchao", "onnxruntime-training", "onnxruntime", "coremltools", "transformers",
            "peft", "llama-cpp-python", "gguf", "numpy")


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """This process's RSS high-water mark: VmHWM of its own address space. Not ``ru_maxrss``: that
    survives fork + exec, so a memory worker started by a parent holding models reports at least the
    parent's size at the fork (ondevice_train's workers all read the same figure that way)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    from mobilepeft.export.bench import peak_rss_mb  # no /proc (macOS)

    return peak_rss_mb()


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "python": platform.python_version()}


def prepare(work: Path, preset: str) -> tuple[Path, Path]:
    """A checkpoint and a synthetic dataset in ``work`` (reused when already there)."""
    from mobilepeft.data.synth import write_synthetic_dataset
    from mobilepeft.presets import write_preset

    model_dir, data_dir = work / f"model-{preset}", work / "data"
    if not (model_dir / "config.json").exists():
        write_preset(preset, model_dir, seed=0)
    if not (data_dir / "train.json").exists():
        write_synthetic_dataset(data_dir, n_train=128, n_val=8, seed=0)
    return model_dir, data_dir


def make_batches(model_dir: Path, data_dir: Path, batch_size: int, count: int) -> list[dict[str, Any]]:
    """``count`` padded training batches drawn with a fixed seed."""
    from mobilepeft.data import SupervisedDataset, collate_batch, load_llava
    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.tokenizer import Tokenizer

    config = MobileVLMConfig.from_dir(model_dir)
    tok = Tokenizer(model_dir)
    convs, _ = load_llava(data_dir / "train.json", data_dir)
    ds = SupervisedDataset(convs, tok, data_dir, config.image_size, config.num_image_tokens, max_length=512)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        idx = torch.randint(len(ds), (batch_size,), generator=g).tolist()
        batches.append(collate_batch([ds[i] for i in idx], pad_id=tok.pad_id))
    return batches


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
               autocast: contextlib.AbstractContextManager | None = None) -> float:
    """Forward (under ``autocast``, e.g. bf16), backward, clip, AdamW step: what one optimizer step
    of ``mobilepeft train`` does."""
    with autocast or contextlib.nullcontext():
        out = model(batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def time_interleaved(fns: dict[str, Callable[[int], Any]], rounds: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Call every ``fn(round)`` once per round, rotating the order; median/min seconds after warmup."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    values: dict[str, list[Any]] = {n: [] for n in names}
    for i in range(warmup + rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            values[name].append(fns[name](i))
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return {n: {"median_s": statistics.median(times[n]), "min_s": min(times[n]), "values": values[n]}
            for n in names}


def add_common_args(ap: argparse.ArgumentParser, output_name: str, variants: tuple[str, ...], *, steps: int,
                    warmup: int) -> None:
    """The flags every benchmark here takes."""
    ap.add_argument("--preset", default="small", help="model preset to build (default: small)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=steps, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where model and data are built (default: temp)")
    ap.add_argument("--output", type=Path, default=RESULTS / output_name)
    ap.add_argument("--memory-worker", choices=variants, help=argparse.SUPPRESS)


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as recorded in the result JSON."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "memory_worker"}


def measure_memory_in_subprocess(script: str, variant: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Run ``script --memory-worker VARIANT`` with the same arguments and return the JSON it prints last."""
    argv = ["--work-dir", str(work)]
    for name, value in vars(args).items():
        if name in ("memory_worker", "work_dir", "output") or value is None or value is False:
            continue
        argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    run = subprocess.run([sys.executable, script, "--memory-worker", variant, *argv], capture_output=True,
                         text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"memory worker for {variant} failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def memory_of_training(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> dict[str, float]:
    """Run the steps and report RSS figures (call in a fresh process, after building the model)."""
    before = current_rss_mib()
    for batch in batches:
        train_step(model, optimizer, batch)
    peak = peak_rss_mib()
    return {"rss_before_train_mib": before, "peak_rss_mib": peak, "train_growth_mib": peak - before}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _script(path: str) -> str:
    """A script's path as run from the repository root (``python -m`` puts the absolute one in argv)."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(ROOT))
    return path


def run_meta() -> dict[str, Any]:
    """Which code, when, on what machine, with which packages and command a result was produced."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": None if status is None else bool(status.strip()),
        # what differs from the commit (tracked files; the list when it is short enough to read)
        "git_modified_files": None if status is None else len(status.splitlines()),
        "git_modified": None if status is None or len(status.splitlines()) > 40
        else sorted(line[3:] for line in status.splitlines()),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "arch": platform.machine(), "cpu": cpu_model(),
                    "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else os.cpu_count(), "ram_gib": _ram_gib()},
        "python": platform.python_version(),
        "packages": versions,
        "command": " ".join(["python", _script(sys.argv[0]), *sys.argv[1:]]),
        "nice": os.nice(0) if hasattr(os, "nice") else None,  # the process's scheduling niceness
    }


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Write ``result`` plus a ``meta`` block to ``path`` (default ``docs/results/<name>.json``) atomically;
    ``meta.wall_seconds`` is the time since the benchmark process imported this module."""
    from mobilepeft.io import write_json

    meta = {**run_meta(), "wall_seconds": round(time.monotonic() - _STARTED, 1),
            # other work on the machine while it ran (1-minute load average; cores in meta.machine)
            "load_average_1m": {"start": _LOAD_AT_START,
                                "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}}
    write_json(path, {"meta": meta, **{k: v for k, v in result.items() if k != "meta"}})
    return Path(path)
