"""Load and validate LLaVA-format conversation JSON.

Expected layout (the format MobileVLM and LLaVA fine-tune on)::

    [{"id": "...", "image": "coco/0001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                        {"from": "gpt", "value": "A cat."}, ...]}, ...]

Everything is checked up front, images included (each is fully decoded once), so that a bad
sample stops the run before the first training step rather than hours into it, and every
error names the file, the sample (index and id), the field, and what to change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mobilepeft.data.template import IMAGE_PLACEHOLDER, move_image_to_front
from mobilepeft.errors import UserError

ROLES = ("human", "gpt")


@dataclass
class Conversation:
    """One validated sample.

    ``image`` is the path as written in the JSON, relative to the image folder (the folder is
    a run option, so samples stay valid when a dataset is moved). ``turns`` are (question,
    answer) pairs; the first question carries the ``<image>`` placeholder in front when the
    sample has an image. ``index`` is the position in the JSON list, used in messages.
    ``source`` is the JSON file the sample came from, also for messages.
    """

    id: str
    index: int
    image: Path | None
    turns: list[tuple[str, str]]
    source: Path | None = None

    @property
    def label(self) -> str:
        """How messages refer to this sample: ``3 (id 'abc')``."""
        return sample_label(self.index, self.id)


def load_llava(
    json_path: str | Path, image_folder: str | Path, *, skip_bad: bool = False
) -> tuple[list[Conversation], list[str]]:
    """Read ``json_path`` and return (conversations, reasons for skipped samples).

    With ``skip_bad`` a sample with a problem is left out and the reason recorded; without it
    the first problem raises :class:`UserError`. Problems with the file itself (missing, not
    JSON, not a list, no usable sample, missing image folder) always raise.
    """
    json_path = Path(json_path)
    image_folder = Path(image_folder)
    records = read_records(json_path)
    if any(isinstance(r, dict) and r.get("image") for r in records) and not image_folder.is_dir():
        raise UserError(
            "image folder not found (the samples reference images relative to it)",
            path=image_folder,
            hint="pass the folder that the 'image' paths in the JSON are relative to",
        )

    parsed: list[Conversation | UserError] = []
    for index, record in enumerate(records):
        try:
            parsed.append(parse_record(record, index, json_path))
        except UserError as err:
            if not skip_bad:
                raise
            parsed.append(err)

    image_files = sorted({image_folder / c.image for c in parsed if isinstance(c, Conversation) and c.image})
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        image_problems = dict(zip(image_files, pool.map(image_problem, image_files), strict=True))

    conversations: list[Conversation] = []
    skipped: list[str] = []
    for item in parsed:
        if isinstance(item, Conversation) and item.image is not None:
            problem = image_problems[image_folder / item.image]
            if problem is not None:
                item = UserError(
                    problem,
                    path=json_path,
                    sample=item.label,
                    field="image",
                    hint="fix or remove the image, or check the image folder; --skip-bad-samples leaves such samples out",
                )
                if not skip_bad:
                    raise item
        if isinstance(item, UserError):
            skipped.append(str(item))
        else:
            conversations.append(item)
    if not conversations:
        raise UserError(
            f"no usable samples: all {len(records)} were skipped; first reason:\n  {skipped[0]}",
            path=json_path,
        )
    return conversations, skipped


def sample_label(index: int, sample_id: str | None) -> str:
    return str(index) if sample_id is None else f"{index} (id {sample_id!r})"


def read_records(json_path: Path) -> list[Any]:
    if not json_path.is_file():
        raise UserError(
            "data file not found",
            path=json_path,
            hint="give the path of a LLaVA-format JSON file (a list of samples)",
        )
    try:
        text = json_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"not UTF-8 text ({exc})", path=json_path, hint="save the file as UTF-8 JSON"
        ) from exc
    if json_path.suffix == ".jsonl":  # JSON Lines (LLaVA's evaluation question files): one sample per line
        data = [_loads(line, json_path, n) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        data = _loads(text, json_path)
    if not isinstance(data, list):
        raise UserError(
            f"the top level must be a list of samples, got a JSON {_json_kind(data)}",
            path=json_path,
            hint='wrap the samples in [...]: [{"id": ..., "image": ..., "conversations": [...]}, ...]',
        )
    if not data:
        raise UserError("the file contains no samples", path=json_path)
    return data


def _loads(text: str, json_path: Path, lineno: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if lineno is None:
            where, hint = (f"at line {exc.lineno}, column {exc.colno}",
                           "fix the syntax there (a JSON validator such as `python -m json.tool` shows it too)")
        else:
            where, hint = f"on line {lineno}, column {exc.colno}", "a .jsonl file holds one JSON object per line"
        raise UserError(f"invalid JSON {where}: {exc.msg}", path=json_path, hint=hint) from exc


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def parse_record(record: Any, index: int, json_path: Path) -> Conversation:
    """Structural checks of one sample (everything except opening its image)."""

    def fail(message: str, field: str | None, hint: str, sample_id: str | None = None) -> UserError:
        return UserError(
            message, path=json_path, sample=sample_label(index, sample_id), field=field, hint=hint
        )

    if not isinstance(record, dict):
        raise fail(
            f"a sample must be a JSON object, got a {_json_kind(record)}",
            None,
            'write each sample as {"id": ..., "image": ..., "conversations": [...]}',
        )
    raw_id = record.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id).strip() == "":
        raise fail("missing or empty sample id", "id", "give every sample a non-empty string id")
    sample_id = str(raw_id)

    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise fail(
            f"'image' must be a non-empty path string, got {image!r}",
            "image",
            "give the image path relative to the image folder, or drop the field for a text-only sample",
            sample_id,
        )

    messages = record.get("conversations")
    if not isinstance(messages, list) or not messages:
        raise fail(
            "missing or empty conversation"
            if not messages
            else f"must be a list, got a {_json_kind(messages)}",
            "conversations",
            'give a list of turns: [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]',
            sample_id,
        )

    texts: list[str] = []
    for k, message in enumerate(messages):
        expected = ROLES[k % 2]
        if not isinstance(message, dict):
            raise fail(
                f"a turn must be a JSON object, got a {_json_kind(message)}",
                f"conversations[{k}]",
                '{"from": "human" | "gpt", "value": "..."}',
                sample_id,
            )
        role = message.get("from")
        if role not in ROLES:
            raise fail(
                f"unknown speaker {role!r}",
                f"conversations[{k}].from",
                "use 'human' for the user and 'gpt' for the assistant",
                sample_id,
            )
        if role != expected:
            raise fail(
                f"turns do not alternate: turn {k} is from {role!r}, expected {expected!r}",
                f"conversations[{k}].from",
                "turns must alternate human, gpt, human, gpt, ... starting with human",
                sample_id,
            )
        value = message.get("value")
        if not isinstance(value, str) or not value.strip():
            raise fail(
                "missing or empty text",
                f"conversations[{k}].value",
                "every turn needs non-empty text",
                sample_id,
            )
        texts.append(value)
    if len(texts) % 2:
        raise fail(
            f"the last turn (conversations[{len(texts) - 1}]) is a question without an answer",
            "conversations",
            "end the conversation with a gpt turn, or remove the unanswered question",
            sample_id,
        )

    _check_placeholders(texts, image is not None, fail, sample_id)
    questions = texts[0::2]
    questions[0] = move_image_to_front(questions[0])
    return Conversation(
        id=sample_id,
        index=index,
        image=None if image is None else Path(image),
        turns=list(zip(questions, texts[1::2], strict=True)),
        source=json_path,
    )


def _check_placeholders(
    texts: list[str], has_image: bool, fail: Callable[..., UserError], sample_id: str
) -> None:
    """``<image>`` must appear exactly once, in the first question, iff the sample has an image."""
    positions = [k for k, text in enumerate(texts) for _ in range(text.count(IMAGE_PLACEHOLDER))]
    if not has_image:
        if positions:
            raise fail(
                f"contains {IMAGE_PLACEHOLDER!r} but the sample has no 'image'",
                f"conversations[{positions[0]}].value",
                f"add an 'image' field, or remove the {IMAGE_PLACEHOLDER!r} placeholder",
                sample_id,
            )
        return
    if not positions:
        raise fail(
            f"the sample has an 'image' but no {IMAGE_PLACEHOLDER!r} placeholder",
            "conversations[0].value",
            f"start the first human turn with '{IMAGE_PLACEHOLDER}\\n'",
            sample_id,
        )
    if len(positions) > 1:
        raise fail(
            f"{IMAGE_PLACEHOLDER!r} appears {len(positions)} times (one image per sample)",
            f"conversations[{positions[1]}].value",
            f"keep a single {IMAGE_PLACEHOLDER!r}, in the first human turn",
            sample_id,
        )
    if positions[0] != 0:
        raise fail(
            f"{IMAGE_PLACEHOLDER!r} must be in the first human turn",
            f"conversations[{positions[0]}].value",
            f"move {IMAGE_PLACEHOLDER!r} to the first human turn",
            sample_id,
        )


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None. Decodes the whole file to catch truncation."""
    if not path.is_file():
        return f"image file not found: {path}"
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"image file cannot be decoded: {path} ({type(exc).__name__}: {exc})"
    return None
