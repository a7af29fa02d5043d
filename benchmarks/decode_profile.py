"""Where an ExecuTorch 8da4w decode step and prefill spend their time, per operator and delegate call
(ExecuTorch's devtools: an ETDump of the real program, read by ``Inspector``), and how far decode is from
the memory-bandwidth bound (decoder weight bytes read per token / measured copy bandwidth).

Builds (once, in --work-dir, shared with benchmarks/deploy_bench.py) the ``mobilevlm-1.7b-shape`` preset
and its 8da4w XNNPACK bundle through the CLI, then in this process, on --threads threads: one vision
encode, one prefill of the image tokens and --prompt-len text tokens, and --decode-steps single-token
decode steps, ETDump recording every instruction of every call. The table groups ``text_decoder``'s
instructions by name: XNNPACK delegate calls, and every operator left to ExecuTorch's own kernels.

    python benchmarks/decode_profile.py                     # 1.7B shape: ~15 min the first time, ~13 GB peak
    python benchmarks/decode_profile.py --preset tiny --output /tmp/p.json  # the harness on the tiny model

Writes docs/results/decode_profile_<preset>.json (docs/deploy-executorch.md, "Where decode time goes").
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, write_result
from deploy_bench import build_model_and_adapter, copy_bandwidth_gb_s, decoder_bytes_per_token, export_bundles

from mobilepeft.export.bench import BenchSettings, bench_inputs, set_threads
from mobilepeft.export.bundle import read_bundle


def _profile(pte: Path, pixels: torch.Tensor, prompt: torch.Tensor, decode_steps: int) -> Path:
    """Run the program once through (vision, prefill, decode steps) with ETDump on; the ETDump file."""
    from executorch.runtime import Runtime

    from mobilepeft.export.executorch.exporter import load_executorch_kernels

    load_executorch_kernels()
    program = Runtime.get().load_program(str(pte), enable_etdump=True, debug_buffer_size=0)
    vision, embed, decoder = (program.load_method(n) for n in ("vision_encoder", "token_embedding", "text_decoder"))
    image = vision.execute([pixels])[0]
    text = embed.execute([prompt])[0]
    prefix = torch.cat([image, text], dim=1)
    logits = decoder.execute([prefix, torch.arange(prefix.shape[1])])[0]
    position = prefix.shape[1]
    for _ in range(decode_steps):
        token = logits[0, -1].argmax().reshape(1, 1)
        logits = decoder.execute([embed.execute([token])[0], torch.tensor([position])])[0]
        position += 1
    out = Path(tempfile.mkdtemp(prefix="decode-profile-")) / "run.etdp"
    program.write_etdump_result_to_file(str(out), str(out.with_suffix(".bin")))
    return out


def _table(etdump: Path, decode_steps: int) -> dict[str, Any]:
    """text_decoder's instructions grouped by name: prefill ms (its one call) and decode ms per step (median).

    ``OPERATOR_CALL`` and ``DELEGATE_CALL`` wrap the events inside them (an ExecuTorch kernel; the XNNPACK
    operators of one delegate call, numbered ``#k`` per call), so kernels and XNNPACK operators are counted
    by name and the wrappers only as what they add: the delegate's own overhead beyond its operators.
    """
    import re

    from executorch.devtools import Inspector

    calls = 1 + decode_steps  # text_decoder: the prefill, then each decode step
    blocks = [b for b in Inspector(etdump_path=str(etdump)).event_blocks
              if any(e.name == "Method::execute" and e.perf_data and len(e.perf_data.raw) == calls for e in b.events)]
    decoder = max(blocks, key=lambda b: len(b.events))  # token_embedding runs as often, with one kernel
    groups: dict[str, dict[str, float]] = defaultdict(lambda: {"prefill_ms": 0.0, "decode_ms": 0.0, "count": 0})
    total = {"prefill_ms": 0.0, "decode_ms": 0.0}
    for event in decoder.events:
        raw = list(event.perf_data.raw) if event.perf_data is not None else []
        if len(raw) != calls or event.name == "OPERATOR_CALL":
            continue
        prefill, decode = raw[0], statistics.median(raw[1:])
        if event.name == "Method::execute":
            total = {"prefill_ms": prefill, "decode_ms": decode}
            continue
        if event.is_delegated_op:
            name = "XNNPACK " + re.sub(r" #\d+$", "", event.name)
        elif event.name == "DELEGATE_CALL":
            name = "XNNPACK delegate overhead (call minus its operators)"
        else:
            name = event.name.removeprefix("native_call_")
        groups[name]["prefill_ms"] += prefill
        groups[name]["decode_ms"] += decode
        groups[name]["count"] += 1
        if event.is_delegated_op:  # an operator inside a delegate call: not overhead
            overhead = groups["XNNPACK delegate overhead (call minus its operators)"]
            overhead["prefill_ms"] -= prefill
            overhead["decode_ms"] -= decode
    rows = sorted(({"name": k, **v} for k, v in groups.items()), key=lambda r: -r["decode_ms"])
    for row in rows:
        row["decode_share"] = row["decode_ms"] / total["decode_ms"] if total["decode_ms"] else None
        row["prefill_share"] = row["prefill_ms"] / total["prefill_ms"] if total["prefill_ms"] else None
    return {"text_decoder_call_ms": total, "by_instruction": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mobilevlm-1.7b-shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32, help="text tokens after the image tokens")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/deploy"))
    ap.add_argument("--output", type=Path, help="default: docs/results/decode_profile_<preset>.json")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        model_dir, adapter_dir = pool.submit(build_model_and_adapter, args.preset, args.work_dir).result()
    export_s: dict[str, float] = {}
    bundle_dir = export_bundles(model_dir, adapter_dir, args.work_dir, args.max_seq_len, export_s, only=("8da4w",))["8da4w"]
    bundle = read_bundle(bundle_dir)
    settings = BenchSettings(threads=args.threads, prompt_len=args.prompt_len, gen_len=args.decode_steps, runs=1, warmup=0)
    pixels, prompt = bench_inputs(bundle, settings)
    set_threads(args.threads)
    t0 = time.perf_counter()
    etdump = _profile(bundle.file(bundle.section("executorch")["file"]), pixels, prompt, args.decode_steps)
    table = _table(etdump, args.decode_steps)
    bandwidth = copy_bandwidth_gb_s(args.threads)
    per_token = decoder_bytes_per_token(model_dir)["8da4w"]
    decode_s = table["text_decoder_call_ms"]["decode_ms"] / 1000
    result = {
        "preset": args.preset, "threads": args.threads, "max_seq_len": args.max_seq_len,
        "prompt_tokens": bundle.manifest["model"]["num_image_tokens"] + args.prompt_len,
        "decode_steps": args.decode_steps, "export_s": export_s, "profile_s": time.perf_counter() - t0,
        "copy_bandwidth_gb_s": bandwidth, "decoder_weight_bytes_per_token": per_token,
        "bandwidth_bound_decode_ms": per_token / bandwidth / 1e6,
        "decode_bandwidth_fraction": per_token / decode_s / 1e9 / bandwidth if decode_s else None,
        **table,
    }
    out = write_result(args.output or RESULTS / f"decode_profile_{args.preset}.json", result)
    calls = table["text_decoder_call_ms"]
    print(f"text_decoder: prefill {calls['prefill_ms']:.1f} ms ({result['prompt_tokens']} tokens), decode "
          f"{calls['decode_ms']:.1f} ms/token; bandwidth bound {result['bandwidth_bound_decode_ms']:.1f} ms/token "
          f"({per_token / 1e9:.2f} GB at {bandwidth:.1f} GB/s)")
    print(f"{'instruction':44s} {'count':>5s} {'decode ms':>10s} {'share':>6s} {'prefill ms':>11s} {'share':>6s}")
    for row in table["by_instruction"][:20]:
        print(f"{row['name'][:44]:44s} {row['count']:5d} {row['decode_ms']:10.2f} {row['decode_share'] or 0:6.1%} "
              f"{row['prefill_ms']:11.2f} {row['prefill_share'] or 0:6.1%}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
