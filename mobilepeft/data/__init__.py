"""Data side: LLaVA JSON loading, the v1 conversation template, dataset, collation, synthetic data."""

from mobilepeft.data.collate import collate_batch
from mobilepeft.data.dataset import SupervisedDataset
from mobilepeft.data.llava import Conversation, load_llava
from mobilepeft.data.synth import chance_accuracy, corpus_lines, question_type, write_synthetic_dataset
from mobilepeft.data.template import (
    IMAGE_PLACEHOLDER,
    SYSTEM_PROMPT,
    build_prompt_ids,
    encode_with_image,
    move_image_to_front,
    spliced_length,
    tokenize_conversation,
)

__all__ = [
    "IMAGE_PLACEHOLDER",
    "SYSTEM_PROMPT",
    "Conversation",
    "SupervisedDataset",
    "build_prompt_ids",
    "chance_accuracy",
    "collate_batch",
    "corpus_lines",
    "encode_with_image",
    "load_llava",
    "move_image_to_front",
    "question_type",
    "spliced_length",
    "tokenize_conversation",
    "write_synthetic_dataset",
]
