"""Personalization at MobileVLM V2 1.7B's real shape (docs/on-device-training.md, "Measured at 1.7B").

The ``mobilevlm-1.7b-shape`` preset (24 layers, hidden 2048, FFN 5632, vocabulary 32000, CLIP
ViT-L/14-336 tower, 144 image tokens; random weights) with a rank-8 LoRA on q/k/v/o/gate/up/down
(benchmarks/deploy_bench.py's). For each mode the bundle is exported for real by the CLI in its own
process (time, peak RSS, files on disk), then a fresh process replays the phone's session with ORT's
training API as ``mobilepeft personalize`` does, phase by phase: the frozen graphs (vision encoder,
and for ``--train-layers K`` the int8 frozen layers) run once per sample and are released, then the
training steps run (batch 1, sequence length 256, image tokens included). Peak RSS is the whole
process's, reset between phases (``/proc/self/clear_refs``), so each phase's high-water mark is its own
and ``personalization_step_peak_rss_mib`` is the largest of them (target: 3 GiB).

The full-decoder mode is exported under a watchdog that stops it at ``--ram-limit-gib`` and records
how far it got.

    python benchmarks/personalize_1p7b.py --train-layers 2

Writes docs/results/personalize_1p7b.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS, write_result
from deploy_bench import build_model_and_adapter

PRESET = "mobilevlm-1.7b-shape"
SEQ_LEN = 256
TARGET_MIB = 3 * 1024


def _phase_start() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(bundle: Path, data: Path, steps: int, threads: int) -> dict[str, Any]:
    """The phone's session, phase by phase, in this (fresh) process."""
    import gc

    import numpy as np

    from mobilepeft.export.bundle import read_bundle
    from mobilepeft.export.ort.memory import session_estimate_mib
    from mobilepeft.export.ort.personalize import BatchBuilder, open_trainer

    phases: dict[str, dict[str, float]] = {}
    start_rss = _vm("VmRSS:")
    b = read_bundle(bundle)
    estimate = session_estimate_mib(b, 1)
    _phase_start()
    t0 = time.perf_counter()
    builder = BatchBuilder(b, threads=threads)
    rows, folder = builder.samples(data, None)
    builder.prepare((rows, folder))
    gc.collect()
    phases["frozen_graphs"] = {"peak_rss_mib": _vm("VmHWM:"), "seconds": time.perf_counter() - t0,
                               "samples": len(rows)}
    _phase_start()
    t0 = time.perf_counter()
    trainer = open_trainer(b, threads=threads)
    load_s = time.perf_counter() - t0
    times, losses = [], []
    for step in range(steps):
        batch = builder.batch([rows[step % len(rows)]], folder)
        t = time.perf_counter()
        losses.append(trainer.train_step(batch))
        times.append(time.perf_counter() - t)
        print(f"  step {step + 1}/{steps}: loss {losses[-1]:.4f}, {times[-1]:.2f} s", file=sys.stderr, flush=True)
    step_s = float(np.median(times[1:] if len(times) > 1 else times))
    phases["training"] = {"peak_rss_mib": _vm("VmHWM:"), "session_load_seconds": load_s, "step_seconds_median": step_s,
                          "step_seconds": times, "losses": losses}
    return {"phases": phases, "python_baseline_rss_mib": start_rss, "estimate_mib": estimate,
            "personalization_step_peak_rss_mib": max(p["peak_rss_mib"] for p in phases.values()),
            "step_seconds": step_s, "tokens_per_s": SEQ_LEN / step_s}


def run_watched(cmd: list[str], limit_gib: float) -> dict[str, Any]:
    """Run ``cmd``; stop its process tree when its RSS passes ``limit_gib``. Time, peak RSS, how it ended."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, peak, stopped, lines = psutil.Process(proc.pid), 0.0, False, []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree) / 2**30
        except psutil.Error:
            rss = 0.0
        peak = max(peak, rss)
        if rss > limit_gib:
            stopped = True
            for p in reversed(tree):
                p.kill()
            break
        time.sleep(0.5)
    proc.wait()
    reader.join(timeout=5)
    stage = next((ln.strip() for ln in reversed(lines) if ln.startswith("[")), "")
    return {"seconds": time.perf_counter() - t0, "peak_rss_gib": peak, "returncode": proc.returncode,
            "stopped_at_ram_limit": stopped, "last_stage": stage, "log_tail": [ln.rstrip() for ln in lines[-5:]]}


def export(model: Path, adapter: Path, out: Path, sample: Path, train_layers: int | None,
           limit_gib: float) -> dict[str, Any]:
    """Export ``out`` (or reuse the record of an earlier export of it, ``<out>.export.json``: the bundle,
    or how the export failed)."""
    record = out.with_name(out.name + ".export.json")
    if record.is_file():
        previous = json.loads(record.read_text())
        if previous["returncode"] != 0 or (out / "manifest.json").is_file():
            return previous
    cmd = [sys.executable, "-m", "mobilepeft", "export", "onnx-training", "--model", str(model), "--adapter",
           str(adapter), "--output-dir", str(out), "--seq-len", str(SEQ_LEN), "--sample-data", str(sample),
           "--overwrite"]
    if train_layers is not None:
        cmd += ["--train-layers", str(train_layers)]
    print("$", " ".join(cmd), flush=True)
    result = run_watched(cmd, limit_gib)
    if result["returncode"] == 0:
        result["files_bytes"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        result["total_bytes"] = sum(result["files_bytes"].values())
    record.write_text(json.dumps(result))
    print(f"  {'exported' if result['returncode'] == 0 else 'stopped'} after {result['seconds']:.0f} s, "
          f"peak {result['peak_rss_gib']:.1f} GiB", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ram-limit-gib", type=float, default=21.0, help="stop an export past this (the machine has 24)")
    ap.add_argument("--skip-full", action="store_true", help="do not try the full-decoder export")
    ap.add_argument("--model-work-dir", type=Path, default=Path("outputs/bench/adapter_cost"),
                    help="where the 1.7B-shape checkpoint and adapter are (made there if missing; shared with adapter_cost)")
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/personalize_1p7b"))
    ap.add_argument("--output", type=Path, default=RESULTS / "personalize_1p7b.json")
    ap.add_argument("--worker", nargs=2, type=Path, metavar=("BUNDLE", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.threads)))
        return
    from mobilepeft.data.synth import write_personal_dataset
    from mobilepeft.presets import PRESETS

    model, adapter = build_model_and_adapter(PRESET, args.model_work_dir)
    data = write_personal_dataset(args.work_dir / "personal", n_train=4, n_val=1, image_size=336)["train_json"]
    modes: dict[str, Any] = {}
    for name, layers in ((f"top{args.train_layers}", args.train_layers), ("full", None)):
        if name == "full" and args.skip_full:
            continue
        bundle = args.work_dir / f"bundle-{name}"
        mode = {"train_layers": layers or PRESETS[PRESET]["llm"]["num_hidden_layers"],
                "export": export(model, adapter, bundle, data, layers, args.ram_limit_gib)}
        if mode["export"]["returncode"] == 0:
            done = subprocess.run([sys.executable, __file__, "--worker", str(bundle), str(data), "--steps",
                                   str(args.steps), "--threads", str(args.threads)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"personalization worker failed:\n{done.stderr[-3000:]}")
            mode["session"] = json.loads(done.stdout.strip().splitlines()[-1])
            s = mode["session"]
            print(f"  {name}: peak RSS {s['personalization_step_peak_rss_mib']:.0f} MiB "
                  f"(frozen graphs {s['phases']['frozen_graphs']['peak_rss_mib']:.0f}, training "
                  f"{s['phases']['training']['peak_rss_mib']:.0f}), step {s['step_seconds']:.2f} s, "
                  f"{s['tokens_per_s']:.0f} tok/s", flush=True)
        modes[name] = mode
    shape = {k: PRESETS[PRESET]["llm"][k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads")}
    shape |= {"vocab_size": PRESETS[PRESET]["vocab_size"], "vision_image_size": PRESETS[PRESET]["vision"]["image_size"],
              "vision_layers": PRESETS[PRESET]["vision"]["num_hidden_layers"], "num_image_tokens": 144}
    split = modes[f"top{args.train_layers}"]
    result = {"preset": PRESET, "shape": shape, "seq_len": SEQ_LEN, "batch_size": 1, "threads": args.threads,
              "lora": {"rank": 8, "targets": "q,k,v,o,gate,up,down"}, "target_mib": TARGET_MIB,
              "train_layers": args.train_layers, "prefix_weights": "int8",
              "personalization_step_peak_rss_mib": split["session"]["personalization_step_peak_rss_mib"],
              "modes": modes}
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
