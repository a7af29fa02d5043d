"""A procedurally generated LLaVA-format VQA dataset for the no-download demo and tests.

The demo trains a tiny randomly initialised MobileVLM whose CLIP tower stays frozen at random
weights; only LoRA on the LLM and the projector learn. Random CLIP features keep coarse
colour, area and position information but little else, so the task is chosen to be
answerable from exactly that: 1-3 flat shapes in five well-separated colours on a white
background, questions about colour, shape, count and left/right position, and single-word
lowercase answers (exact match is then a fair metric). Everything is a pure function of the
seed, so runs and tests are reproducible byte for byte.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mobilepeft.data.template import IMAGE_PLACEHOLDER, SYSTEM_PROMPT
from mobilepeft.errors import UserError
from mobilepeft.io import write_json
from mobilepeft.outputs import atomic_output

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
SIDES = ("left", "right")
BACKGROUND = (255, 255, 255)

# Question type -> (phrasings, possible answers). Colour/shape/position questions are only
# asked about single-shape images, where they have one right answer.
QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "color": (
        ("What color is the shape?", "What is the color of the shape?", "Which color is the object?"),
        tuple(COLORS),
    ),
    "shape": (
        ("What shape is this?", "What is the shape in the image?", "Which shape is shown?"),
        SHAPES,
    ),
    "count": (
        ("How many shapes are there?", "How many shapes are in the image?", "Count the shapes."),
        COUNTS,
    ),
    "position": (
        (
            "Is the shape on the left or the right?",
            "Is the object on the left side or the right side?",
            "Which side is the shape on, left or right?",
        ),
        SIDES,
    ),
}
MULTI_TURN_FRACTION = 0.1


def question_type(question: str) -> str | None:
    """The question type ("color", "shape", "count", "position") of a generated question, or None."""
    text = question.replace(IMAGE_PLACEHOLDER, "").strip()
    for qtype, (phrasings, _) in QUESTIONS.items():
        if text in phrasings:
            return qtype
    return None


def write_synthetic_dataset(
    out_dir: str | Path, *, n_train: int = 800, n_val: int = 160, image_size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Write ``images/*.png``, ``train.json`` and ``val.json`` under ``out_dir``.

    Image paths in the JSON are relative to ``out_dir`` (the image folder to train with). The
    directory appears whole or not at all, so an interrupted run never leaves a JSON that
    references a missing image.
    """
    for name, value, least in (("n_train", n_train, 1), ("n_val", n_val, 0), ("image_size", image_size, 16)):
        if value < least:
            raise UserError(f"must be >= {least} (got {value})", field=name.replace("_", "-"))
    out_dir = Path(out_dir)
    result: dict[str, Any] = {"image_folder": out_dir}
    with atomic_output(out_dir, "dataset") as tmp:
        (tmp / "images").mkdir()
        for split, count in (("train", n_train), ("val", n_val)):
            rng = random.Random(f"mobilepeft-synth/{seed}/{split}")
            records = [_make_sample(rng, split, i, image_size, tmp) for i in range(count)]
            write_json(tmp / f"{split}.json", records)
            result[f"{split}_json"] = out_dir / f"{split}.json"
            result[f"n_{split}"] = count
            result[f"n_{split}_multi_turn"] = sum(len(r["conversations"]) > 2 for r in records)
    return result


#: The "user's own words" of the personalization demo: what this user calls each shape.
USER_WORDS = {"circle": "ring", "square": "tile", "triangle": "tent"}


def write_personal_dataset(out_dir: str | Path, *, words: dict[str, str] | None = None, n_train: int = 48,
                           n_val: int = 32, image_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """A user's own data for on-device personalization: ``train.json``/``val.json`` of shape
    questions about new single-shape images, answered in the user's words (``USER_WORDS``).

    The base model never saw these images or words (its answers are ``circle``/``square``/
    ``triangle``), so the accuracy before personalization is ~0 and what it gains is learned
    on the phone.
    """
    words = dict(USER_WORDS if words is None else words)
    missing = sorted(set(SHAPES) - set(words))
    if missing:
        raise UserError(f"no word for {', '.join(missing)}", field="words", hint=f"name all of {', '.join(SHAPES)}")
    out_dir = Path(out_dir)
    phrasings = QUESTIONS["shape"][0]
    with atomic_output(out_dir, "dataset") as tmp:
        (tmp / "images").mkdir()
        for split, count in (("train", n_train), ("val", n_val)):
            rng = random.Random(f"mobilepeft-personal/{seed}/{split}")
            records = []
            for index in range(count):
                image, facts = _draw_scene(rng, 1, image_size)
                name = f"images/{split}_{index:05d}.png"
                image.save(tmp / name, format="PNG")
                records.append({"id": f"{split}-{index:05d}", "image": name, "question_type": "shape",
                                "conversations": [
                                    {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{rng.choice(phrasings)}"},
                                    {"from": "gpt", "value": words[facts["shape"]]}]})
            write_json(tmp / f"{split}.json", records)
    return {"image_folder": out_dir, "train_json": out_dir / "train.json", "val_json": out_dir / "val.json"}


def corpus_lines() -> list[str]:
    """Text covering every word the generator and the v1 template can emit (tokenizer training).

    The lines are the pieces the template tokenises one by one (text before the image, the
    question after it, which starts with the newline of ``<image>\\n``, the answer), each as often
    as a whole first turn, so BPE merges the system prompt into few tokens (short sequences keep
    the demo model fast) and learns the question words as they follow a newline. Text-only turns
    are covered too.
    """
    lines = []
    for phrasings, answers in QUESTIONS.values():
        lines.extend(answers)
        for q in phrasings:
            for a in answers:
                lines += [f"{SYSTEM_PROMPT} USER: ", f"\n{q} ASSISTANT:", a, f"USER: {q} ASSISTANT: {a}"]
    return lines


def chance_accuracy(json_path: str | Path) -> float:
    """Expected exact-match accuracy on the first questions of ``json_path`` when guessing
    uniformly among the possible answers of each question's type (the floor a trained model
    must clear)."""
    json_path = Path(json_path)
    records = json.loads(json_path.read_text(encoding="utf-8"))
    total = 0.0
    for index, record in enumerate(records):
        question = record["conversations"][0]["value"]
        qtype = question_type(question)
        if qtype is None:
            raise UserError(
                f"not a question of the synthetic dataset: {question!r}",
                path=json_path,
                sample=f"{index} (id {record.get('id')!r})",
                field="conversations[0].value",
                hint="chance accuracy is only defined for files written by write_synthetic_dataset",
            )
        total += 1.0 / len(QUESTIONS[qtype][1])
    return total / len(records)


def _make_sample(rng: random.Random, split: str, index: int, size: int, out_dir: Path) -> dict[str, Any]:
    qtype = rng.choice(list(QUESTIONS))
    n_shapes = rng.randint(1, len(COUNTS)) if qtype == "count" else 1
    image, facts = _draw_scene(rng, n_shapes, size)
    asked = [qtype]
    if n_shapes == 1 and rng.random() < MULTI_TURN_FRACTION:
        asked.append(rng.choice([t for t in QUESTIONS if t != qtype]))

    conversations = []
    for k, kind in enumerate(asked):
        phrasings, _ = QUESTIONS[kind]
        question = rng.choice(phrasings)
        if k == 0:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": facts[kind]}]

    name = f"images/{split}_{index:05d}.png"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (out_dir / name).write_bytes(buffer.getvalue())  # inside the dataset's atomic directory
    return {"id": f"{split}-{index:05d}", "image": name, "question_type": qtype, "conversations": conversations}


def _draw_scene(rng: random.Random, n_shapes: int, size: int) -> tuple[Image.Image, dict[str, str]]:
    """Draw ``n_shapes`` shapes; return the image and the answer to each applicable question type."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    facts = {"count": COUNTS[n_shapes - 1]}
    if n_shapes == 1:
        # One large shape, clearly in the left or the right third of the image.
        side = rng.choice(SIDES)
        radius = rng.uniform(0.16, 0.22) * size
        cx = rng.uniform(0.22, 0.30) * size
        cx = cx if side == "left" else size - cx
        cy = rng.uniform(0.30, 0.70) * size
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        draw_shape(draw, shape, COLORS[color], cx, cy, radius)
        facts.update(color=color, shape=shape, position=side)
    else:
        # Smaller shapes in distinct cells of a 3x3 grid, so they never overlap.
        cell = size / 3
        for slot in rng.sample(range(9), n_shapes):
            radius = rng.uniform(0.28, 0.36) * cell
            jitter = cell / 2 - radius - 1
            cx = (slot % 3 + 0.5) * cell + rng.uniform(-jitter, jitter)
            cy = (slot // 3 + 0.5) * cell + rng.uniform(-jitter, jitter)
            draw_shape(draw, rng.choice(SHAPES), COLORS[rng.choice(list(COLORS))], cx, cy, radius)
    return image, facts


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, color: tuple[int, int, int], cx: float, cy: float, radius: float
) -> None:
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    else:
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + 0.8 * radius), (cx + radius, cy + 0.8 * radius)],
            fill=color,
        )
