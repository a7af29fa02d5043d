"""The demo task's figures: ``mobilepeft demo`` and its training half with every adapter method and rank schedule.

* ``lora`` with the default schedule (``fixed``) in ``outputs/demo``: exactly ``make demo``, the
  whole loop (``mobilepeft.export.loop_demo.run_loop_demo``: training, both bundles, ORT
  personalization, adapter.ptd, answers through the native runner's hot-swap), whose transcript
  README.md and docs/on-device-loop.md show, and the checkpoint later benchmarks
  (quant_agreement, coreml_sizes) read; ``mobilepeft eval`` on it gives the per-question-type
  table of docs/evaluation.md and ``mobilepeft export onnx-training`` of its adapter the worked
  example of docs/on-device-training.md (docs/results/demo.json, the default);
* the training half (tiny model, synthetic dataset, 300 steps, validation before/after, reload,
  merge; ``mobilepeft.demo.run_demo``) with every method and ``--schedule fixed`` (docs/methods.md,
  "Which to pick") and ``lora`` with ``hydra``, ``hierarchical`` and ``dynamic`` (docs/hydra.md, the
  ablation table): ``--set methods`` (docs/results/demo_methods.json).

    make runner && python benchmarks/demo_runs.py     # make demo + eval: ~2.5 min on 2 idle cores
    python benchmarks/demo_runs.py --set methods      # 7 more training runs
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, write_result

SETS = {
    "demo": ("lora:fixed",),
    "methods": ("lora:fixed", "multihead:fixed", "dmlora:fixed", "adaring:fixed", "lora:hydra", "lora:hierarchical",
                "lora:dynamic"),
}
#: make demo's configuration: the demo runs the default adapter and schedule
DEMO = SETS["demo"][0]


def parse_transcript(lines: list[str]) -> dict[str, Any]:
    """The numbers of the demo's summary lines, as printed."""
    text = "\n".join(lines)
    out: dict[str, Any] = {}
    patterns = {
        "val_loss": r"val loss\s+([\d.]+) -> ([\d.]+)",
        "val_accuracy_pct": r"val accuracy\s+([\d.]+)% -> ([\d.]+)%",
        "chance_pct": r"chance ([\d.]+)%",
        "val_samples": r"chance [\d.]+%, (\d+) samples",
        "merged_max_logit_diff": r"max \|logit difference\| vs adapter model ([\d.e+-]+)\)",
        "ranks": r"ranks\s+(\d+)\.\.(\d+)",
        "trained_s": r"trained in (\d+) s",
        "done_s": r"done in (\d+) s",
    }
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        if m:
            values = [float(g) for g in m.groups()]
            out[key] = values[0] if len(values) == 1 else values
    return out


def run_one(adapter: str, schedule: str, out_dir: Path, steps: int, runner: Path | None) -> dict[str, Any]:
    """The whole loop when ``runner`` is given (make demo), else the training half."""
    from mobilepeft.demo import run_demo
    from mobilepeft.export.loop_demo import run_loop_demo

    lines: list[str] = []

    def echo(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    t0 = time.perf_counter()
    loop = None
    if runner is not None:
        loop = run_loop_demo(out_dir, steps=steps, adapter=adapter, schedule=schedule, runner=runner, echo=echo)
    else:
        for line in run_demo(out_dir, steps=steps, adapter=adapter, schedule=schedule, echo=echo).summary:
            echo(line)
    seconds = time.perf_counter() - t0
    run_dir = out_dir / f"run-{adapter}"
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    settings = json.loads((run_dir / "adapter" / "mobilepeft_adapter.json").read_text())
    return {"adapter": adapter, "schedule": schedule, "steps": steps, "output_dir": str(out_dir), "seconds": seconds,
            "eval_before": {"loss": evals[0]["eval_loss"], "accuracy": evals[0]["eval_accuracy"]},
            "eval_after": {"loss": evals[-1]["eval_loss"], "accuracy": evals[-1]["eval_accuracy"]},
            "adapter_settings": settings,
            "adapter_parameters": adapter_parameters(run_dir / "adapter"), "printed": parse_transcript(lines),
            "transcript": lines, **({"loop": loop} if loop else {})}


def adapter_parameters(adapter_dir: Path) -> int:
    """Parameters of the adapter's own tensors (the projector file excluded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(adapter_dir.glob("*.safetensors")):
        if file.name == "mm_projector.safetensors":
            continue
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run_eval(demo: Path) -> dict[str, Any]:
    """``mobilepeft eval`` on the demo's adapter as docs/evaluation.md runs it (in a subprocess, as typed)."""
    with tempfile.TemporaryDirectory(prefix="demo-eval-") as tmp:
        scores = Path(tmp) / "scores.json"
        cmd = [sys.executable, "-m", "mobilepeft", "eval", "--model", str(demo / "model"), "--adapter",
               str(demo / "run-lora" / "adapter"), "--data", str(demo / "data" / "val.json"), "--image-folder",
               str(demo / "data"), "--output", str(Path(tmp) / "answers.jsonl"), "--metrics-json", str(scores)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        print(done.stdout)
        return {"command": " ".join(["mobilepeft", *cmd[3:]]).replace(tmp, "OUT"),
                "scores": json.loads(scores.read_text()), "printed": done.stdout.replace(tmp, "OUT").splitlines()}


def run_ort_export(demo: Path) -> dict[str, Any]:
    """docs/on-device-training.md's worked example: ``mobilepeft export onnx-training`` of the demo adapter,
    as typed there (in a subprocess), and the self-test line it prints."""
    with tempfile.TemporaryDirectory(prefix="demo-ort-") as tmp:
        cmd = [sys.executable, "-m", "mobilepeft.export.cli", "export", "onnx-training", "--model", str(demo / "model"),
               "--adapter", str(demo / "run-lora" / "adapter"), "--output-dir", str(Path(tmp) / "ort")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        print(done.stdout)
        bundle = Path(tmp) / "ort"
        sizes = {str(f.relative_to(bundle)): f.stat().st_size for f in sorted(bundle.rglob("*")) if f.is_file()}
    m = re.search(r"PyTorch loss ([\d.]+), ORT eval loss ([\d.]+) \(rel\. diff ([\d.e+-]+)\)", done.stdout)
    return {"command": " ".join(["mobilepeft", *cmd[3:-1], "OUT"]), "printed": done.stdout.replace(tmp, "OUT").splitlines(),
            "pytorch_loss": float(m.group(1)), "ort_eval_loss": float(m.group(2)), "rel_diff": float(m.group(3)),
            "file_bytes": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=SETS, default="demo", help="which configurations (see above)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--demo-dir", type=Path, default=Path("outputs/demo"), help=f"where {DEMO} runs (make demo's)")
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/demo"), help="the other configurations")
    ap.add_argument("--runner", type=Path, default=Path("build/runner/mobilepeft_runner"),
                    help=f"`make runner` output; make demo's run ({DEMO}) goes through it")
    ap.add_argument("--output", type=Path, default=None, help="default: docs/results/demo.json or demo_methods.json")
    args = ap.parse_args()
    args.output = args.output or RESULTS / ("demo.json" if args.set == "demo" else f"demo_{args.set}.json")
    runs = {}
    for config in SETS[args.set]:
        adapter, schedule = config.split(":")
        out = args.demo_dir if config == DEMO and args.set == "demo" else args.work_dir / f"{adapter}-{schedule}"
        print(f"== {config} -> {out}", flush=True)
        runs[config] = run_one(adapter, schedule, out, args.steps, args.runner if out == args.demo_dir else None)
    result: dict[str, Any] = {"benchmark": f"demo_runs --set {args.set}", "steps": args.steps, "runs": runs}
    if args.set == "demo":
        result["eval"] = run_eval(args.demo_dir)
        result["ort_export"] = run_ort_export(args.demo_dir)
    print(f"\n{'method:schedule':<22}{'val loss':>16}{'val accuracy':>18}{'seconds':>9}")
    for config, r in runs.items():
        b, a = r["eval_before"], r["eval_after"]
        print(f"{config:<22}{b['loss']:>7.3f} -> {a['loss']:<6.3f}{b['accuracy']:>8.1%} -> {a['accuracy']:<7.1%}"
              f"{r['seconds']:>9.0f}")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
