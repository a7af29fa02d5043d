"""The quality benchmark's data: a pretraining corpus and three downstream tasks with a real shift.

* ``pretrain``: the built-in synthetic VQA set (one flat shape: colour, shape, count, side).
* ``digits``: real handwritten digits (scikit-learn's copy of the UCI set: 1797 8x8 scans by 43
  writers), drawn dark on white like the pretraining images. New images, new questions, new
  answers: "which digit?", "is it even?", "what is the digit plus one?". Train and test images
  are disjoint.
* ``relations``: compositional questions over multi-shape scenes, which pretraining never asks:
  counting the shapes of one colour (colour filter + count), counting the shapes on the left
  (spatial filter + count) and naming the shape of a colour (colour bound to shape).
* ``codes``: new knowledge, not a new way of reading the image: every colour x shape (and colour x
  shape x side) of the pretraining images has an arbitrary code word the model never saw, and the
  question asks for it. The image is read as in pretraining; what is new is a lookup table from
  attribute conjunctions to new answer tokens, the kind of association a transformer stores in its
  MLPs and late layers, so this task needs capacity there rather than in the attention that reads
  the picture.

Every record carries ``question_type`` (the per-type breakdown of ``mobilepeft eval``); every file
is a pure function of the seed and written atomically, the JSON files last.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mobilepeft.data.synth import BACKGROUND, COLORS, SHAPES, SIDES, draw_shape, write_synthetic_dataset
from mobilepeft.data.synth import corpus_lines as synth_corpus_lines
from mobilepeft.data.template import IMAGE_PLACEHOLDER, SYSTEM_PROMPT
from mobilepeft.io import atomic_file, write_json

IMAGE_SIZE = 64

DIGIT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "digit": ("Which digit is this?", "What digit is written here?"),
    "even": ("Is the digit even?", "Is this an even number?"),
    "plus_one": ("What is the digit plus one?", "What is one more than this digit?"),
}
REL_COLORS = ("red", "green", "blue")
COUNT_WORDS = ("zero", "one", "two", "three")
REL_QUESTIONS: dict[str, Callable[[str], str]] = {
    "count_color": lambda c: f"How many {c} shapes are there?",
    "count_left": lambda c: "How many shapes are on the left side?",
    "shape_of_color": lambda c: f"What shape is the {c} one?",
}
CODE_WORDS = ("amber", "birch", "cedar", "delta", "ember", "flint", "grove", "haze")
CODE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "code": ("What is the code word for this shape?", "Which code word goes with this shape?"),
    "code_side": ("What is the code word for this shape on its side?", "Which code word goes with this shape and side?"),
}
#: the possible answers of each question type (chance accuracy, tokenizer coverage)
ANSWERS: dict[str, tuple[str, ...]] = {
    "digit": tuple(str(d) for d in range(10)),
    "even": ("yes", "no"),
    "plus_one": tuple(str(d) for d in range(1, 11)),
    "count_color": COUNT_WORDS,
    "count_left": COUNT_WORDS,
    "shape_of_color": SHAPES,
    "code": CODE_WORDS,
    "code_side": CODE_WORDS,
}


def corpus_lines() -> list[str]:
    """Text of every task (the pretrained model's tokenizer covers the downstream vocabulary, as a
    real LLM's does): the pieces the v1 template tokenises, as in ``synth.corpus_lines``."""
    questions = [q for qs in DIGIT_QUESTIONS.values() for q in qs]
    questions += [make(c) for make in REL_QUESTIONS.values() for c in REL_COLORS]
    questions += [q for qs in CODE_QUESTIONS.values() for q in qs]
    answers = sorted({a for values in ANSWERS.values() for a in values})
    lines = list(synth_corpus_lines())
    for q in questions:
        lines += [f"{SYSTEM_PROMPT} USER: ", f"\n{q} ASSISTANT:"]
    return lines + answers * 4


def write_pretrain_corpus(out_dir: Path, *, n_train: int, n_val: int) -> dict[str, Any]:
    return write_synthetic_dataset(out_dir, n_train=n_train, n_val=n_val, image_size=IMAGE_SIZE, seed=1234)


def write_digits_task(out_dir: Path, *, n_train: int, n_val: int, n_test: int) -> dict[str, Path]:
    """``train.json`` / ``val.json`` / ``test.json`` over disjoint sets of scans: test gets the last third;
    validation is carved from the training two thirds (in proportion to ``n_val``), so hyperparameters are
    chosen on scans that neither training nor the test ever sees."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.target)))
    random.Random("mobilepeft-quality/digits").shuffle(order)
    cut = len(order) * 2 // 3
    held = max(1, cut * n_val // (n_train + n_val)) if n_val else 0
    pools = {"train": order[:cut - held], "val": order[cut - held:cut], "test": order[cut:]}
    out: dict[str, Path] = {}
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        rng = random.Random(f"mobilepeft-quality/digits/{split}")
        records = []
        for k in range(count):
            index = pools[split][k % len(pools[split])]
            qtype = list(DIGIT_QUESTIONS)[k % len(DIGIT_QUESTIONS)]
            digit = int(digits.target[index])
            answer = {"digit": str(digit), "even": "yes" if digit % 2 == 0 else "no", "plus_one": str(digit + 1)}[qtype]
            name = f"images/digit_{index:04d}.png"
            if not (out_dir / name).is_file():
                _write_png(out_dir / name, _digit_image(digits.images[index]))
            records.append(_record(f"{split}-{k:05d}", name, qtype, rng.choice(DIGIT_QUESTIONS[qtype]), answer))
        rng.shuffle(records)
        write_json(out_dir / f"{split}.json", records)
        out[split] = out_dir / f"{split}.json"
    return out


def write_relations_task(out_dir: Path, *, n_train: int, n_val: int, n_test: int) -> dict[str, Path]:
    """Scenes drawn fresh per question; validation is the tail of the training stream (the same generator)."""
    out: dict[str, Path] = {}
    streams = {"train": ("train", n_train + n_val), "test": ("test", n_test)}
    for stream, count in streams.values():
        rng = random.Random(f"mobilepeft-quality/relations/{stream}")
        records = []
        for k in range(count):
            qtype = list(REL_QUESTIONS)[k % len(REL_QUESTIONS)]
            color = rng.choice(REL_COLORS)
            image, answer = _relations_scene(rng, qtype, color)
            name = f"images/{stream}_{k:05d}.png"
            _write_png(out_dir / name, image)
            records.append(_record(f"{stream}-{k:05d}", name, qtype, REL_QUESTIONS[qtype](color), answer))
        splits = {"train": records[:n_train], "val": records[n_train:]} if stream == "train" else {"test": records}
        for split, chunk in splits.items():
            write_json(out_dir / f"{split}.json", chunk)
            out[split] = out_dir / f"{split}.json"
    return out


def code_table() -> dict[tuple[str, ...], str]:
    """The codes task's answers: (colour, shape) and (colour, shape, side) -> code word. Each table deals the
    words out in turn over a fixed shuffle of its keys, so every word answers about as many keys, and the
    side-specific word is unrelated to the side-free one."""
    table: dict[tuple[str, ...], str] = {}
    for salt, keys in (("pair", [(c, s) for c in COLORS for s in SHAPES]),
                       ("side", [(c, s, side) for c in COLORS for s in SHAPES for side in SIDES])):
        random.Random(f"mobilepeft-quality/codes/{salt}").shuffle(keys)
        table.update({key: CODE_WORDS[k % len(CODE_WORDS)] for k, key in enumerate(keys)})
    return table


def write_codes_task(out_dir: Path, *, n_train: int, n_val: int, n_test: int) -> dict[str, Path]:
    """One shape per image, drawn as in pretraining (any size, anywhere in its half); validation is the tail
    of the training stream. Test images are new drawings of the same keys: the table is what is learnt."""
    table = code_table()
    out: dict[str, Path] = {}
    for stream, count in (("train", n_train + n_val), ("test", n_test)):
        rng = random.Random(f"mobilepeft-quality/codes/{stream}")
        records = []
        for k in range(count):
            qtype = list(CODE_QUESTIONS)[k % len(CODE_QUESTIONS)]
            color, shape, side = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIDES)
            image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
            radius = rng.uniform(0.12, 0.2) * IMAGE_SIZE
            half = IMAGE_SIZE / 2
            cx = rng.uniform(radius + 1, half - radius - 1) + (half if side == "right" else 0)
            cy = rng.uniform(radius + 1, IMAGE_SIZE - radius - 1)
            draw_shape(ImageDraw.Draw(image), shape, COLORS[color], cx, cy, radius)
            answer = table[(color, shape) if qtype == "code" else (color, shape, side)]
            name = f"images/{stream}_{k:05d}.png"
            _write_png(out_dir / name, image)
            records.append(_record(f"{stream}-{k:05d}", name, qtype, rng.choice(CODE_QUESTIONS[qtype]), answer))
        splits = {"train": records[:n_train], "val": records[n_train:]} if stream == "train" else {"test": records}
        for split, chunk in splits.items():
            write_json(out_dir / f"{split}.json", chunk)
            out[split] = out_dir / f"{split}.json"
    return out


def _relations_scene(rng: random.Random, qtype: str, color: str) -> tuple[Image.Image, str]:
    """Shapes in distinct cells of a 3x3 grid; the answer to ``qtype`` about ``color``."""
    others = [c for c in REL_COLORS if c != color]
    if qtype == "count_color":
        k = rng.randrange(len(COUNT_WORDS))
        colors = [color] * k + [rng.choice(others) for _ in range(rng.randint(0 if k else 1, 2))]
        cells = rng.sample(range(9), len(colors))
        answer = COUNT_WORDS[k]
    elif qtype == "count_left":  # shapes in the left and right columns only, so "left" is unambiguous
        k = rng.randrange(len(COUNT_WORDS))
        right = rng.randint(0 if k else 1, 3)
        cells = rng.sample((0, 3, 6), k) + rng.sample((2, 5, 8), right)
        colors = [rng.choice(REL_COLORS) for _ in cells]
        answer = COUNT_WORDS[k]
    else:
        cells = rng.sample(range(9), 2)
        colors = [color, rng.choice(others)]
        answer = ""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = IMAGE_SIZE / 3
    shapes = rng.sample(SHAPES, 2) if qtype == "shape_of_color" else [rng.choice(SHAPES) for _ in colors]
    for slot, c, shape in zip(cells, colors, shapes, strict=True):
        radius = rng.uniform(0.30, 0.38) * cell
        jitter = cell / 2 - radius - 1
        cx = (slot % 3 + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (slot // 3 + 0.5) * cell + rng.uniform(-jitter, jitter)
        draw_shape(draw, shape, COLORS[c], cx, cy, radius)
    return image, answer or shapes[0]


def _digit_image(scan) -> Image.Image:
    """An 8x8 scan (0 = paper, 16 = ink) as a dark-on-white RGB image of the model's size."""
    small = Image.new("L", (8, 8))
    small.putdata([int(255 - 255 * float(v) / 16.0) for v in scan.flatten()])
    return small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).convert("RGB")


def _record(sample_id: str, image: str, qtype: str, question: str, answer: str) -> dict[str, Any]:
    return {"id": sample_id, "image": image, "question_type": qtype,
            "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
                              {"from": "gpt", "value": answer}]}


def _write_png(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with atomic_file(path, "wb") as fh:
        fh.write(buffer.getvalue())
