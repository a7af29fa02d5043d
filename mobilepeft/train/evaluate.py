"""Validation: token-level loss and exact-match accuracy of greedy short answers."""

from __future__ import annotations

import re

import torch

from mobilepeft.data.collate import collate_batch
from mobilepeft.data.dataset import SupervisedDataset
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM


def normalize_answer(text: str) -> str:
    """Lower-case, trim, drop trailing punctuation: 'Red.' and 'red' are the same answer."""
    return re.sub(r"[\s.!?,;:]+$", "", text.strip().lower())


@torch.no_grad()
def evaluate(model: MobileVLMForCausalLM, dataset: SupervisedDataset, *, batch_size: int = 16,
             max_new_tokens: int = 8) -> dict[str, float]:
    """Mean next-token loss over all supervised tokens, and greedy exact-match accuracy on the
    first question of every sample."""
    was_training = model.training
    model.eval()
    tokenizer = model.tokenizer
    loss_sum, n_tokens, correct, total = 0.0, 0, 0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate_batch(items, pad_id=tokenizer.pad_id)
        out = model(batch["input_ids"], pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"], labels=batch["labels"])
        n = int((out.labels[:, 1:] != -100).sum())
        loss_sum += float(out.loss) * n
        n_tokens += n
        images = [it["pixel_values"] for it in items if it["pixel_values"] is not None]
        generated = model.generate([it["prompt_ids"].tolist() for it in items],
                                   torch.stack(images) if images else None, max_new_tokens=max_new_tokens)
        for it, ids in zip(items, generated, strict=True):
            correct += normalize_answer(tokenizer.decode(ids)) == normalize_answer(it["answer"])
            total += 1
    model.train(was_training)
    return {"loss": loss_sum / max(n_tokens, 1), "accuracy": correct / max(total, 1), "n": total}
