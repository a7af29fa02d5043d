"""Torch dataset of tokenised conversations with lazily preprocessed images.

Tokenisation happens once, at construction: it is cheap, it finds every too-long sample
before training starts, and it fixes the ids so that every epoch sees the same tokens.
Images are decoded in ``__getitem__`` (in DataLoader workers) because holding a whole
dataset's pixel tensors in memory would not scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilepeft.data.llava import Conversation
from mobilepeft.data.template import build_prompt_ids, tokenize_conversation
from mobilepeft.errors import UserError
from mobilepeft.models.image_processing import preprocess_images
from mobilepeft.models.tokenizer import Tokenizer


class SupervisedDataset(Dataset):
    """Items: ``input_ids``, ``labels``, ``pixel_values`` ([3,S,S] or None), ``id``, ``answer``
    (the first assistant answer, for exact-match eval) and ``prompt_ids`` (the first question's
    generation prompt, for generation-based eval)."""

    def __init__(
        self,
        conversations: Sequence[Conversation],
        tokenizer: Tokenizer,
        image_folder: str | Path,
        image_size: int,
        num_image_tokens: int,
        max_length: int,
        *,
        skip_bad: bool = False,
    ) -> None:
        self.image_folder = Path(image_folder)
        self.image_size = image_size
        self.conversations: list[Conversation] = []
        self.skipped: list[str] = []
        self._tokens: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for conv in conversations:
            try:
                input_ids, labels = tokenize_conversation(
                    conv.turns,
                    tokenizer,
                    num_image_tokens=num_image_tokens,
                    max_length=max_length,
                    sample=conv.label,
                    path=conv.source,
                )
            except UserError as err:
                if not skip_bad:
                    raise
                self.skipped.append(str(err))
                continue
            prompt_ids = build_prompt_ids(conv.turns[0][0], tokenizer)
            self.conversations.append(conv)
            self._tokens.append(
                (
                    torch.tensor(input_ids, dtype=torch.long),
                    torch.tensor(labels, dtype=torch.long),
                    torch.tensor(prompt_ids, dtype=torch.long),
                )
            )
        if conversations and not self.conversations:
            raise UserError(
                f"no usable samples: all {len(conversations)} are longer than --max-length {max_length}; "
                f"first reason:\n  {self.skipped[0]}",
                hint="raise --max-length",
            )

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict[str, Any]:
        conv = self.conversations[index]
        input_ids, labels, prompt_ids = self._tokens[index]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": None if conv.image is None else self._load_image(conv),
            "id": conv.id,
            "answer": conv.turns[0][1],
            "prompt_ids": prompt_ids,
        }

    def _load_image(self, conv: Conversation) -> torch.Tensor:
        path = self.image_folder / conv.image
        try:
            with Image.open(path) as image:
                return preprocess_images([image], self.image_size)[0]
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            # The loader decoded every image up front; reaching this means the file changed since.
            raise UserError(
                f"image file cannot be read: {path} ({type(exc).__name__}: {exc})",
                path=conv.source,
                sample=conv.label,
                field="image",
                hint="the file changed after the dataset was validated; restore it and restart",
            ) from exc
