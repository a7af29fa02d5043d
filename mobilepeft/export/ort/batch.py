"""Raw samples -> the exact input arrays of the ONNX Runtime training graph.

This is what the phone app does before each ``trainStep`` (the Kotlin/Swift code mirrors it,
and the manifest describes it), written once here so the exporter's self-test, ``mobilepeft
personalize`` and the tests all feed the graph the same way:

* the conversation is tokenised with the v1 template exactly as for desktop training;
* the single image slot (-200) is widened to ``num_image_tokens`` slots, the positions the
  image tokens occupy in the decoder;
* rows are right-padded to ``seq_len``; ``labels`` are shifted by one (``labels[t]`` is the
  token that position ``t`` must predict, -100 where nothing is supervised) and flattened to
  ``(B*seq_len,)``, the layout ORT's cross-entropy loss needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilepeft.data.llava import Conversation
from mobilepeft.data.template import tokenize_conversation
from mobilepeft.export.ort.training_graph import LABELS
from mobilepeft.models.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Tokenizer


@dataclass
class EncodedSample:
    """One row of a training batch, before its image is encoded."""

    input_ids: np.ndarray  # [seq_len] int64, image span = num_image_tokens x -200
    attention_mask: np.ndarray  # [seq_len] int64
    labels: np.ndarray  # [seq_len] int64, already shifted
    image: Path | None  # relative to the image folder, as in the JSON
    label: str  # how messages name the sample


def encode_sample(conv: Conversation, tokenizer: Tokenizer, *, num_image_tokens: int, seq_len: int,
                  pad_id: int) -> EncodedSample:
    """Tokenise one conversation into a padded, label-shifted row of ``seq_len`` positions.

    Raises :class:`~mobilepeft.errors.UserError` naming the sample when its first question alone
    does not fit (longer conversations lose trailing turns, as in desktop training).
    """
    ids, labels = tokenize_conversation(conv.turns, tokenizer, num_image_tokens=num_image_tokens,
                                        max_length=seq_len, sample=conv.label, path=conv.source,
                                        length_flag="--seq-len")
    wide_ids: list[int] = []
    wide_labels: list[int] = []
    for token, label in zip(ids, labels, strict=True):
        if token == IMAGE_TOKEN_INDEX:
            wide_ids += [IMAGE_TOKEN_INDEX] * num_image_tokens
            wide_labels += [IGNORE_INDEX] * num_image_tokens
        else:
            wide_ids.append(token)
            wide_labels.append(label)
    n = len(wide_ids)
    input_ids = np.full(seq_len, pad_id, dtype=np.int64)
    attention_mask = np.zeros(seq_len, dtype=np.int64)
    shifted = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    input_ids[:n] = wide_ids
    attention_mask[:n] = 1
    shifted[: n - 1] = wide_labels[1:]
    return EncodedSample(input_ids, attention_mask, shifted, conv.image, conv.label)


def stack_batch(rows: Sequence[EncodedSample], image_input: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """The named graph inputs for ``rows``; ``images`` holds each row's encoded image (zeros if none)."""
    if len(images) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(images)} encoded images")
    return {
        "input_ids": np.stack([r.input_ids for r in rows]),
        "attention_mask": np.stack([r.attention_mask for r in rows]),
        image_input: np.ascontiguousarray(images, dtype=np.float32),
        LABELS: np.concatenate([r.labels for r in rows]),
    }
