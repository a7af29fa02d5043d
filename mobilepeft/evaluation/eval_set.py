"""Evaluation sets: the question, image, reference answers and question type of every sample.

Two record shapes are read, from ``.json`` (a list) or ``.jsonl`` (one record per line):

* LLaVA conversations (training format, ScienceQA ``llava_test_*.json``): the first human turn
  is the question, the first gpt turn the reference answer;
* LLaVA question files (``llava_gqa_testdev_balanced.jsonl``, ``llava_textvqa_val_*.jsonl``):
  ``question_id``, ``image``, ``text`` (or ``question``). Their answers live in the benchmark's
  own file, passed as ``answers_file`` (GQA's ``{qid: {"answer": ...}}``, TextVQA's
  ``{"data": [{"question_id", "answers"}]}``, or a list of ``{question_id, answer(s)}``), or
  inline as ``answer`` / ``answers``.

An ``answers`` list (VQA-style: several annotators) takes precedence over a single answer. The
question type for the per-type breakdown is the record's ``question_type``, ``category`` or
``type`` field, else "all".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilepeft.data.llava import image_problem, parse_record, read_records, sample_label
from mobilepeft.data.template import IMAGE_PLACEHOLDER, move_image_to_front
from mobilepeft.errors import UserError

TYPE_FIELDS = ("question_type", "category", "type")


@dataclass(frozen=True)
class EvalItem:
    question_id: str
    image: Path | None  # relative to the image folder
    question: str  # with "<image>\n" in front when there is an image
    answers: tuple[str, ...]
    question_type: str


def load_eval_set(path: str | Path, image_folder: str | Path, answers_file: str | Path | None = None) -> list[EvalItem]:
    """Read and validate every sample (and that its image opens); the first problem raises."""
    path, image_folder = Path(path), Path(image_folder)
    records = read_records(path)
    external = _read_answers(Path(answers_file)) if answers_file is not None else {}
    items = [_parse(record, index, path, external) for index, record in enumerate(records)]
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.question_id in seen:
            raise UserError(f"duplicate question id {item.question_id!r} (also sample {seen[item.question_id]})",
                            path=path, sample=index, field="question_id", hint="give every question a unique id")
        seen[item.question_id] = index
    if any(item.image is not None for item in items) and not image_folder.is_dir():
        raise UserError("image folder not found (the samples reference images relative to it)", path=image_folder,
                        hint="pass --image-folder, the folder the 'image' paths are relative to")
    for index, item in enumerate(items):
        if item.image is not None and (problem := image_problem(image_folder / item.image)):
            raise UserError(problem, path=path, sample=sample_label(index, item.question_id), field="image",
                            hint="fix the path or the image, or check --image-folder")
    return items


def _parse(record: Any, index: int, path: Path, external: dict[str, list[str]]) -> EvalItem:
    if isinstance(record, dict) and "conversations" in record:
        conv = parse_record(record, index, path)
        qid, question, image = conv.id, conv.turns[0][0], conv.image
        answers = _answers_of(record) or [conv.turns[0][1]]  # an "answers" list (VQA-style) wins
    else:
        if not isinstance(record, dict):
            raise UserError("a sample must be a JSON object", path=path, sample=index,
                            hint='{"question_id": ..., "image": ..., "text": ...}')
        raw_id = record.get("question_id", record.get("id"))
        if raw_id is None or isinstance(raw_id, bool) or str(raw_id).strip() == "":
            raise UserError("missing question id", path=path, sample=index, field="question_id",
                            hint="give every question a 'question_id' (or 'id')")
        qid = str(raw_id)
        question = record.get("text", record.get("question"))
        if not isinstance(question, str) or not question.strip():
            raise UserError("missing or empty question", path=path, sample=sample_label(index, qid), field="text",
                            hint="put the question in 'text' (LLaVA question files) or 'question'")
        image = record.get("image")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise UserError(f"'image' must be a non-empty path string, got {image!r}", path=path,
                            sample=sample_label(index, qid), field="image")
        image = None if image is None else Path(image)
        if image is not None and IMAGE_PLACEHOLDER not in question:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        question = move_image_to_front(question)
        answers = _answers_of(record)
    if qid in external:
        answers = external[qid]
    if not answers:
        raise UserError("no reference answer", path=path, sample=sample_label(index, qid), field="answer",
                        hint="add 'answer'/'answers' to the record, or pass --answers with the benchmark's answer file")
    qtype = next((str(record[f]) for f in TYPE_FIELDS if record.get(f) not in (None, "")), "all")
    return EvalItem(qid, image, question, tuple(answers), qtype)


def _answers_of(entry: dict[str, Any]) -> list[str]:
    """``answers`` (strings, or VQAv2's ``{"answer": ...}`` objects) or a single ``answer``."""
    raw = entry.get("answers")
    if isinstance(raw, list):
        return [str(a["answer"] if isinstance(a, dict) else a) for a in raw]
    if entry.get("answer") is not None:
        return [str(entry["answer"])]
    return []


def _read_answers(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise UserError("answers file not found", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"not a JSON file: {exc}", path=path) from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, list):
        out = {}
        for k, entry in enumerate(data):
            if not isinstance(entry, dict) or "question_id" not in entry:
                raise UserError("each entry needs a question_id", path=path, sample=k)
            out[str(entry["question_id"])] = _answers_of(entry)
        return out
    if isinstance(data, dict):
        return {str(qid): [str(v)] if isinstance(v, str) else _answers_of(v) for qid, v in data.items()
                if isinstance(v, str | dict)}
    raise UserError("expected {question_id: answer} or a list of {question_id, answer(s)}", path=path)
