"""Validation during training: token-level loss and exact-match accuracy of greedy short answers."""

from __future__ import annotations

import torch

from mobilepeft.data.collate import collate_batch
from mobilepeft.data.dataset import SupervisedDataset
from mobilepeft.evaluation.metrics import exact_match
from mobilepeft.evaluation.vqa import greedy_answers
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM


@torch.no_grad()
def evaluate(model: MobileVLMForCausalLM, dataset: SupervisedDataset, *, batch_size: int = 16,
             max_new_tokens: int = 8) -> dict[str, float]:
    """Mean next-token loss over all supervised tokens, and greedy exact-match accuracy on the
    first question of every sample (``mobilepeft eval`` scores the same way)."""
    was_training = model.training
    model.eval()
    loss_sum, n_tokens, correct, total = 0.0, 0, 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        device = next(model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in collate_batch(items, pad_id=model.tokenizer.pad_id).items()}
        out = model(batch["input_ids"], pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"], labels=batch["labels"])
        n = int((out.labels[:, 1:] != -100).sum())
        loss_sum += float(out.loss) * n
        n_tokens += n
        images = [it["pixel_values"] for it in items if it["pixel_values"] is not None]
        answers = greedy_answers(model, [it["prompt_ids"].tolist() for it in items],
                                 torch.stack(images).to(device) if images else None, max_new_tokens)
        for it, text in zip(items, answers, strict=True):
            correct += exact_match(text, [it["answer"]])
            total += 1
    model.train(was_training)
    return {"loss": loss_sum / max(n_tokens, 1), "accuracy": correct / max(total, 1), "n": total}
