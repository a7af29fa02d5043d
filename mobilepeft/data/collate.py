"""Batch collation for :class:`~mobilepeft.data.dataset.SupervisedDataset` items.

Sequences are right-padded (training needs no left padding: every position's loss is computed
in one pass). Images are stacked only for samples that have one, in batch order, because the
model fills the -200 slots of the batch in that order; text-only samples contribute nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mobilepeft.models.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def collate_batch(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """``input_ids``/``attention_mask``/``labels`` [B,T], ``pixel_values`` [N_img,3,S,S] or None, ``ids``.

    Use with a DataLoader as ``collate_fn=functools.partial(collate_batch, pad_id=tokenizer.pad_id)``.
    """
    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, :n] = item["input_ids"]
        attention_mask[row, :n] = 1
        labels[row, :n] = item["labels"]
    images = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
    if int((input_ids == IMAGE_TOKEN_INDEX).sum()) != len(images):
        raise ValueError("every sample with an image needs exactly one image slot (-200), and only those")
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.stack(images) if images else None,
        "ids": [item["id"] for item in items],
    }
