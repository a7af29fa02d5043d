"""The training half of ``mobilepeft demo`` on the embedded default, end to end.

Stages: tiny MobileVLM checkpoint (real format) -> synthetic LLaVA dataset -> adapter
training with validation before/after -> reload the adapter and answer a question -> merge the
adapter into a deployable checkpoint and check it computes the same thing. The phone half
(export, on-device personalization, answers through the swapped adapter) builds on its result in
:mod:`mobilepeft.export.loop_demo`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mobilepeft.data.synth import chance_accuracy, write_synthetic_dataset
from mobilepeft.data.template import build_prompt_ids
from mobilepeft.loading import load_vlm
from mobilepeft.merge import merge_adapter
from mobilepeft.outputs import claim_output_dir, write_marker
from mobilepeft.presets import write_preset
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer

#: Hyper-parameters that make the tiny random model learn the synthetic task in a few minutes on 2 cores.
DEMO_TRAIN = dict(rank=8, alpha=16.0, batch_size=16, lr=3e-3, warmup_ratio=0.05, max_length=256,
                  save_every=100, eval_batch_size=32, log_every=10)


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when inside it: what the demo prints stays short."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class Stages:
    """Numbered progress lines, ``[k/N] what -> where``, for a demo made of several parts."""

    def __init__(self, total: int, echo: Callable[[str], None]) -> None:
        self.total, self.done, self.echo = total, 0, echo

    def __call__(self, text: str) -> None:
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] {text}")


TRAINING_STAGES = 5


@dataclass
class DemoTraining:
    """What the training half produced, and the lines that summarise it."""

    output_dir: Path  # the demo's folder as the demo prints it (relative to the working directory when inside it)
    model_dir: Path
    adapter_dir: Path
    eval_before: dict[str, Any]
    eval_after: dict[str, Any]
    summary: list[str]


def run_demo(output_dir: Path, *, steps: int = 300, adapter: str = "lora", schedule: str | None = None,
             echo: Callable[[str], None] = print, stages: Stages | None = None) -> DemoTraining:
    """Run the training half in ``output_dir`` (scratch: the demo's model and data are reused,
    everything else is rewritten); ``stages`` numbers its progress lines within a longer demo."""
    output_dir = _relative(claim_output_dir(output_dir, "demo", overwrite=True))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_marker(output_dir, "demo")
    stages = stages or Stages(TRAINING_STAGES, echo)
    t0 = time.perf_counter()
    model_dir, data_dir, run_dir = output_dir / "model", output_dir / "data", output_dir / f"run-{adapter}"
    stages(f"tiny MobileVLM V2 checkpoint (real MobileVLM format) -> {model_dir}")
    if not (model_dir / "config.json").is_file():
        write_preset("tiny", model_dir)
    stages(f"synthetic LLaVA-format dataset -> {data_dir}")
    if not (data_dir / "val.json").is_file():
        write_synthetic_dataset(data_dir)
    cfg = TrainConfig.from_flat(dict(model=str(model_dir), data=str(data_dir / "train.json"), image_folder=str(data_dir),
                      eval_data=str(data_dir / "val.json"), output_dir=str(run_dir), adapter=adapter,
                      max_steps=steps, overwrite=True, **({"schedule": schedule} if schedule else {}), **DEMO_TRAIN))
    cfg.validate()
    stages(f"training {adapter} with the {cfg.schedule.kind} rank schedule for {steps} steps -> {run_dir}")
    result = Trainer(cfg).run()
    stages("reloading the adapter with mobilepeft.load_vlm and answering a validation question")
    model = load_vlm(model_dir, adapter=result.adapter_dir)
    sample = json.loads((data_dir / "val.json").read_text())[0]
    question = sample["conversations"][0]["value"]
    pixels = model.preprocess_images([Image.open(data_dir / sample["image"])])
    answer = model.tokenizer.decode(model.generate(build_prompt_ids(question, model.tokenizer), pixels,
                                                   max_new_tokens=8)[0])
    merged_dir = output_dir / f"merged-{adapter}"
    stages(f"merging the adapter into a full checkpoint (same MobileVLM format) -> {merged_dir}")
    merge_adapter(model_dir, result.adapter_dir, merged_dir)
    merged = load_vlm(merged_dir)
    ids = torch.tensor([build_prompt_ids(question, model.tokenizer)])
    with torch.no_grad():
        gap = (merged(ids, pixel_values=pixels).logits - model(ids, pixel_values=pixels).logits).abs().max().item()
    b, a = result.eval_before, result.eval_after
    lines = [f"  question      {question.replace(chr(10), ' ')!r} (image {sample['image']})",
             f"  model answer  {answer!r}   reference {sample['conversations'][1]['value']!r}",
             f"  val loss      {b['loss']:.3f} -> {a['loss']:.3f}",
             f"  val accuracy  {b['accuracy']:.1%} -> {a['accuracy']:.1%}   (chance {chance_accuracy(data_dir / 'val.json'):.1%}, "
             f"{a['n']} samples)"]
    fmt = ("PEFT LoRA format" if adapter == "lora" else
           f"{adapter} format; `mobilepeft adapter to-lora` writes its exact PEFT LoRA form")
    lines += [f"  adapter       {result.adapter_dir}  ({fmt}; + mm_projector.safetensors)",
              f"  merged model  {merged_dir}  (max |logit difference| vs adapter model {gap:.1e})",
              f"  metrics       {run_dir / 'metrics.jsonl'}"]
    if (run_dir / "rank_history.png").is_file():
        final = json.loads((run_dir / "rank_history.json").read_text())["events"][-1]["ranks"].values()
        lines.append(f"  ranks         {min(final)}..{max(final)} at the budget of rank {cfg.adapter.rank}: "
                     f"{run_dir / 'rank_history.png'}")
    lines.append(f"  trained in {time.perf_counter() - t0:.0f} s")
    return DemoTraining(output_dir, model_dir, result.adapter_dir, b, a, lines)
