"""How much of the on-device gain training only the top K layers keeps (docs/on-device-training.md,
"Training the top layers").

The demo's loop on the tiny model: the desktop adapter of ``make demo`` (LoRA, HyDRA schedule), then
the phone's personalization on the user's own words (circle->ring, ...; 96 photos, 120 ORT steps,
the demo's settings) with ``export onnx-training --train-layers K`` for every K (K = all layers is the
whole-decoder bundle; below it the frozen layers are int8, as on a phone). Answers are scored by exact
match on held-out questions, with PyTorch and the personalized adapter (``adapter from-ort``).

Seeds: each seed draws its own personal data set (photos and order) and its own batch order. Two
question sets per seed: ``selection`` (another draw, used to pick the default K) and ``held_out``
(reported; never used to choose). Gain = accuracy after - before; share = gain(K) / gain(all).

    python benchmarks/split_quality.py        # ~10 min on 2 cores

Writes docs/results/split_quality.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from common import RESULTS, write_result

from mobilepeft.data.synth import write_personal_dataset
from mobilepeft.demo import run_demo
from mobilepeft.evaluation.eval_set import load_eval_set
from mobilepeft.evaluation.vqa import evaluate_answers
from mobilepeft.export.loop_demo import PERSONAL_DATA, PERSONALIZE
from mobilepeft.export.ort.exporter import export_onnx_training
from mobilepeft.export.ort.personalize import personalize
from mobilepeft.export.ort.to_adapter import adapter_from_ort
from mobilepeft.loading import load_vlm

#: Share of the whole-decoder gain the default K must keep (issue 23).
SHARE_GOAL = 0.9


def accuracy(model_dir: Path, adapter: Path, data: dict[str, Any]) -> float:
    """Exact match of the greedy answers to ``data``'s held-out questions."""
    model = load_vlm(model_dir, adapter=adapter)
    folder = Path(data["image_folder"])
    return evaluate_answers(model, load_eval_set(data["val_json"], folder), folder, max_new_tokens=4).overall.exact_match


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("outputs/bench/split_quality"))
    ap.add_argument("--output", type=Path, default=RESULTS / "split_quality.json")
    args = ap.parse_args()
    work = args.work_dir
    trained = run_demo(work / "demo", echo=lambda _: None)
    layers = load_vlm(trained.model_dir, load_tokenizer=False).config.llama_config().num_hidden_layers
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        train = write_personal_dataset(work / f"personal-{seed}", seed=seed, **PERSONAL_DATA)
        selection = write_personal_dataset(work / f"selection-{seed}", seed=1000 + seed, n_train=1,
                                           n_val=PERSONAL_DATA["n_val"])
        before = {name: accuracy(trained.model_dir, trained.adapter_dir, d)
                  for name, d in (("selection", selection), ("held_out", train))}
        for k in range(1, layers + 1):
            bundle, me = work / f"bundle-k{k}", work / f"me-k{k}-s{seed}"
            if not (bundle / "manifest.json").is_file():
                export_onnx_training(trained.model_dir, trained.adapter_dir, bundle,
                                     train_layers=k if k < layers else None, echo=lambda _: None)
            report = personalize(bundle, train["train_json"], me, eval_data=train["val_json"], seed=seed,
                                 echo=lambda _: None, **PERSONALIZE)
            adapter = adapter_from_ort(me / "checkpoint", bundle, work / f"adapter-k{k}-s{seed}")
            after = {name: accuracy(trained.model_dir, adapter, d)
                     for name, d in (("selection", selection), ("held_out", train))}
            runs.append({"seed": seed, "train_layers": k, "before": before, "after": after,
                         "eval_loss_before": report.eval_loss_before, "eval_loss_after": report.eval_loss_after,
                         "train_step_ms_median": report.train_step_ms_median})
            print(f"seed {seed} K={k}: held-out {before['held_out']:.3f} -> {after['held_out']:.3f}, "
                  f"selection {before['selection']:.3f} -> {after['selection']:.3f}, "
                  f"step {report.train_step_ms_median:.0f} ms", flush=True)

    def share(split: str) -> dict[int, float]:
        """Mean over seeds of gain(K) / gain(all layers)."""
        out = {}
        for k in range(1, layers + 1):
            shares = []
            for seed in range(args.seeds):
                run = {r["train_layers"]: r for r in runs if r["seed"] == seed}
                gain = {j: run[j]["after"][split] - run[j]["before"][split] for j in run}
                shares.append(gain[k] / gain[layers] if gain[layers] > 0 else float("nan"))
            out[k] = statistics.mean(shares)
        return out

    selection_share, held_out_share = share("selection"), share("held_out")
    default = min(k for k in range(1, layers + 1) if selection_share[k] >= SHARE_GOAL)
    mean_after = {k: statistics.mean(r["after"]["held_out"] for r in runs if r["train_layers"] == k)
                  for k in range(1, layers + 1)}
    result = {"num_hidden_layers": layers, "seeds": args.seeds, "personal_data": PERSONAL_DATA,
              "personalize": PERSONALIZE, "prefix_weights": "int8", "share_goal": SHARE_GOAL,
              "selection_share": selection_share, "held_out_share": held_out_share,
              "held_out_accuracy_after": mean_after,
              "held_out_accuracy_before": statistics.mean(r["before"]["held_out"] for r in runs),
              "default_train_layers": default, "default_held_out_share": held_out_share[default],
              "runs": runs}
    for k in range(1, layers + 1):
        print(f"K={k}: held-out accuracy {mean_after[k]:.3f}, share of the all-layers gain: held-out "
              f"{held_out_share[k]:.2f}, selection {selection_share[k]:.2f}")
    print(f"default K (smallest with >= {SHARE_GOAL:.0%} of the gain on the selection questions): {default}; "
          f"held-out share {held_out_share[default]:.2f}")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
