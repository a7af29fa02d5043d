"""8da4w vs fp32 through ExecuTorch's own runner: do the quantized answers stay the same?

Exports a merged model twice (``--quantize none`` and ``--quantize 8da4w``, same backend), then
answers every question of a LLaVA-format eval set with ExecuTorch's ``MultimodalRunner`` on each
bundle (greedy, the app's path: ``mobilepeft.export.executorch.runner``). Reports the share of identical
answers, each bundle's exact-match accuracy against the references, and the prefill-logit
distances each export's self-test recorded (program vs the modules it was lowered from, and the
8da4w program vs the fp32 model).

Default inputs are what ``make demo`` writes (the tiny model after 300 training steps, 160 val
questions):

    make demo && python benchmarks/quant_agreement.py

Prints a table and writes docs/results/quant_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, environment, write_result

from mobilepeft.export.executorch.exporter import export_executorch
from mobilepeft.export.executorch.runner import BundleRunner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("outputs/demo/merged-lora"), help="merged checkpoint")
    ap.add_argument("--data", type=Path, default=Path("outputs/demo/data/val.json"), help="LLaVA-format eval JSON")
    ap.add_argument("--image-folder", type=Path, default=None, help="default: the data file's folder")
    ap.add_argument("--backend", default="xnnpack", choices=["xnnpack", "portable"])
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/quant_agreement"))
    ap.add_argument("--reuse", action="store_true", help="reuse bundles already in --work-dir")
    ap.add_argument("--output", type=Path, default=RESULTS / "quant_agreement.json")
    args = ap.parse_args()
    images = args.image_folder or args.data.parent
    records = json.loads(args.data.read_text())

    bundles, export_s = {}, {}
    for quantize in ("none", "8da4w"):
        path = args.work_dir / f"{args.backend}-{quantize}"
        if not (args.reuse and (path / "manifest.json").is_file()):
            t0 = time.perf_counter()
            export_executorch(args.model, path, backend=args.backend, quantize=quantize,
                              max_seq_len=args.max_seq_len, echo=print)
            export_s[quantize] = time.perf_counter() - t0
        bundles[quantize] = path

    answers: dict[str, list[str]] = {}
    for quantize, path in bundles.items():
        runner = BundleRunner(path)
        answers[quantize] = [runner.generate(r["conversations"][0]["value"], images / r["image"],
                                             max_new_tokens=args.max_new_tokens).text for r in records]
    references = [r["conversations"][1]["value"].strip().lower() for r in records]
    n = len(records)
    same = sum(a == b for a, b in zip(answers["none"], answers["8da4w"], strict=True))
    accuracy = {q: sum(a.strip().lower() == ref for a, ref in zip(answers[q], references, strict=True)) / n for q in answers}
    manifests = {q: json.loads((p / "manifest.json").read_text())["executorch"] for q, p in bundles.items()}
    sizes = {q: (p / manifests[q]["file"]).stat().st_size for q, p in bundles.items()}
    result = {
        "model": str(args.model), "data": str(args.data), "samples": n, "backend": args.backend,
        "identical_answers": same, "identical_share": same / n,
        "accuracy": accuracy, "pte_bytes": sizes, "export_s": export_s,
        "fp32_program_vs_model_rel_diff": manifests["none"]["parity_rel_diff"],
        "8da4w_program_vs_quantized_modules_rel_diff": manifests["8da4w"]["parity_rel_diff"],
        "8da4w_program_vs_fp32_model_rel_diff": manifests["8da4w"]["quantization_detail"]["fp32_rel_diff"],
        "disagreements": [{"question": r["conversations"][0]["value"], "reference": ref, "fp32": a, "8da4w": b}
                          for r, ref, a, b in zip(records, references, answers["none"], answers["8da4w"], strict=True) if a != b],
        "environment": environment(),
    }
    print(f"\n{'':28}{'fp32':>12}{'8da4w':>12}")
    print(f"{'.pte size (KiB)':28}{sizes['none'] / 1024:12.0f}{sizes['8da4w'] / 1024:12.0f}")
    print(f"{'exact-match accuracy':28}{accuracy['none']:12.1%}{accuracy['8da4w']:12.1%}")
    print(f"identical greedy answers: {same}/{n} = {same / n:.1%}")
    print(f"prefill logits rel. diff: fp32 program vs model {result['fp32_program_vs_model_rel_diff']:.1e}; "
          f"8da4w program vs torchao modules {result['8da4w_program_vs_quantized_modules_rel_diff']:.1e}, "
          f"vs fp32 model {result['8da4w_program_vs_fp32_model_rel_diff']:.2f}")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
