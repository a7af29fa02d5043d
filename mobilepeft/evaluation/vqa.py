"""Run a model over an evaluation set and score its answers, overall and per question type."""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from mobilepeft.data.template import build_prompt_ids, spliced_length
from mobilepeft.errors import UserError
from mobilepeft.evaluation.eval_set import EvalItem
from mobilepeft.evaluation.metrics import exact_match, vqa_accuracy
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM


@dataclass
class Scores:
    n: int = 0
    exact_match: float = 0.0
    vqa_accuracy: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "exact_match": self.exact_match, "vqa_accuracy": self.vqa_accuracy}


@dataclass
class EvalReport:
    overall: Scores
    by_type: dict[str, Scores]
    predictions: list[dict[str, Any]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall.to_dict(), "by_type": {k: v.to_dict() for k, v in self.by_type.items()}}


def greedy_answers(model: MobileVLMForCausalLM, prompts: list[list[int]], pixel_values: torch.Tensor | None,
                   max_new_tokens: int) -> list[str]:
    """Greedy answers (decoded text) to a batch of prompts: what every accuracy here scores."""
    return [model.tokenizer.decode(ids) for ids in model.generate(prompts, pixel_values, max_new_tokens=max_new_tokens)]


@torch.no_grad()
def evaluate_answers(model: MobileVLMForCausalLM, items: list[EvalItem], image_folder: str | Path, *,
                     batch_size: int = 16, max_new_tokens: int = 16, progress: bool = False) -> EvalReport:
    """Answer every item greedily (v1 template, as in training) and score it."""
    was_training = model.training
    model.eval()
    image_folder = Path(image_folder)
    limit = model.llm.config.max_position_embeddings
    prompts = []
    for item in items:
        ids = build_prompt_ids(item.question, model.tokenizer)
        if spliced_length(ids, model.config.num_image_tokens) + max_new_tokens > limit:
            raise UserError(f"prompt plus {max_new_tokens} new tokens exceeds the model's {limit} positions",
                            sample=f"id {item.question_id!r}", hint="shorten the question or lower --max-new-tokens")
        prompts.append(ids)
    # Batches never mix image and text-only questions (one pixel tensor per batch).
    order = sorted(range(len(items)), key=lambda i: items[i].image is None)
    texts: dict[int, str] = {}
    bar = tqdm(total=len(items), disable=not (progress and sys.stderr.isatty()), desc="eval", unit="q")
    start = 0
    while start < len(order):
        has_image = items[order[start]].image is not None
        batch = []
        while start < len(order) and len(batch) < batch_size and (items[order[start]].image is not None) == has_image:
            batch.append(order[start])
            start += 1
        pixels = None
        if has_image:
            images = []
            for i in batch:
                with Image.open(image_folder / items[i].image) as im:
                    images.append(im.convert("RGB"))
            pixels = model.preprocess_images(images).to(next(model.parameters()).device)
        for i, text in zip(batch, greedy_answers(model, [prompts[i] for i in batch], pixels, max_new_tokens),
                           strict=True):
            texts[i] = text
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return score(items, [texts[i] for i in range(len(items))])


def score(items: list[EvalItem], predictions: list[str]) -> EvalReport:
    """Mean exact match and VQA accuracy overall and per question type (types sorted by name)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    rows = []
    for item, text in zip(items, predictions, strict=True):
        em, acc = exact_match(text, item.answers), vqa_accuracy(text, item.answers)
        for key in ("", item.question_type):
            sums[key][0] += 1
            sums[key][1] += em
            sums[key][2] += acc
        rows.append({"question_id": item.question_id, "prompt": item.question, "text": text,
                     "answers": list(item.answers), "question_type": item.question_type,
                     "exact_match": em, "vqa_accuracy": acc})

    def mean(key: str) -> Scores:
        n, em, acc = sums[key]
        return Scores(int(n), em / max(n, 1), acc / max(n, 1))

    return EvalReport(mean(""), {k: mean(k) for k in sorted(sums) if k}, rows)
