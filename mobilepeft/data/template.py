"""Conversation template "v1" (MobileVLM/LLaVA v1) and its tokenisation.

Text form of a conversation::

    {system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

The ids are built segment by segment instead of tokenising that string in one go, for two
reasons: the label mask is then exact (no guessing where an answer starts after BPE merges
across a boundary), and the generation prompt (:func:`build_prompt_ids`) is by construction
the same token prefix that training used, so a model is never asked a question in a
tokenisation it did not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mobilepeft.errors import UserError
from mobilepeft.models.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Tokenizer

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_PLACEHOLDER = "<image>"


def move_image_to_front(question: str) -> str:
    """Put the ``<image>`` placeholder first, as LLaVA v1 does ("<image>\\n" + question).

    Datasets write the placeholder before or after the question; the model was trained with it
    first, so both spellings map to one token layout. Text without a placeholder is unchanged.
    """
    if IMAGE_PLACEHOLDER not in question:
        return question
    return IMAGE_PLACEHOLDER + "\n" + question.replace(IMAGE_PLACEHOLDER, "").strip()


def encode_with_image(text: str, tokenizer: Tokenizer) -> list[int]:
    """Encode ``text`` with every ``<image>`` replaced by one IMAGE_TOKEN_INDEX (-200) slot."""
    ids: list[int] = []
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer.encode(chunk))
    return ids


def build_prompt_ids(question: str, tokenizer: Tokenizer) -> list[int]:
    """BOS + "{system} USER: {question} ASSISTANT:" — the prompt a model answers at inference.

    ``question`` may contain one ``<image>`` placeholder anywhere; it is moved to the front.
    """
    if question.count(IMAGE_PLACEHOLDER) > 1:
        raise UserError(
            f"the prompt contains {IMAGE_PLACEHOLDER!r} {question.count(IMAGE_PLACEHOLDER)} times",
            hint=f"use {IMAGE_PLACEHOLDER!r} at most once (one image per conversation)",
        )
    text = f"{SYSTEM_PROMPT} USER: {move_image_to_front(question)} ASSISTANT:"
    return [tokenizer.bos_id] + encode_with_image(text, tokenizer)


def spliced_length(input_ids: Sequence[int], num_image_tokens: int) -> int:
    """Sequence length after the model replaces each -200 slot by ``num_image_tokens`` tokens."""
    slots = sum(1 for i in input_ids if i == IMAGE_TOKEN_INDEX)
    return len(input_ids) + slots * (num_image_tokens - 1)


def tokenize_conversation(
    turns: Sequence[tuple[str, str]],
    tokenizer: Tokenizer,
    *,
    num_image_tokens: int = 1,
    max_length: int | None = None,
    sample: str | int | None = None,
    path: str | Path | None = None,
    length_flag: str = "--max-length",
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation of (question, answer) turns.

    Labels are IGNORE_INDEX on BOS, on every prompt and on the image slot; each answer's tokens
    and its EOS are supervised. ``max_length`` bounds the *spliced* length (each image slot
    counts as ``num_image_tokens``, what the model actually processes). Too-long conversations
    lose whole trailing turns; if the first turn alone is too long its answer is cut, as long as
    at least one answer token stays. ``sample``/``path`` only name the sample in errors, and
    ``length_flag`` the option that sets ``max_length`` for the command at hand.
    """
    if not turns:
        raise ValueError("a conversation needs at least one (question, answer) turn")
    input_ids: list[int] = []
    labels: list[int] = []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            prompt = build_prompt_ids(question, tokenizer)
        else:
            prompt = tokenizer.encode(f"USER: {question} ASSISTANT:")
        reply = tokenizer.encode(answer) + [tokenizer.eos_id]
        if (
            max_length is not None
            and spliced_length(input_ids + prompt + reply, num_image_tokens) > max_length
        ):
            if k > 0:
                break
            prompt_length = spliced_length(prompt, num_image_tokens)
            if prompt_length + 1 > max_length:
                turn_length = spliced_length(prompt + reply, num_image_tokens)
                raise UserError(
                    f"sequence longer than {length_flag} ({turn_length} > {max_length}): the first question "
                    f"alone takes {prompt_length} tokens (image tokens included), "
                    "leaving no room for the answer",
                    path=path,
                    sample=sample,
                    field="conversations",
                    hint=f"raise {length_flag} (at least {turn_length}) or shorten the question text",
                )
            reply = reply[: max_length - prompt_length]
        input_ids += prompt + reply
        labels += [IGNORE_INDEX] * len(prompt) + reply
    return input_ids, labels
