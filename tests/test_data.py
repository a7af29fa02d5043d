"""Data side: preprocessing, LLaVA loading/validation, v1 template, dataset, collation, synthetic data."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mobilepeft.data import (
    Conversation,
    SupervisedDataset,
    build_prompt_ids,
    chance_accuracy,
    collate_batch,
    corpus_lines,
    load_llava,
    move_image_to_front,
    question_type,
    tokenize_conversation,
    write_synthetic_dataset,
)
from mobilepeft.data.synth import COLORS, QUESTIONS
from mobilepeft.errors import UserError
from mobilepeft.models.image_processing import CLIP_MEAN, CLIP_STD, PAD_COLOR, preprocess_images
from mobilepeft.models.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Tokenizer


def _norm(value: int, channel: int) -> float:
    return (value / 255.0 - CLIP_MEAN[channel]) / CLIP_STD[channel]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=512,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return Tokenizer(folder)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=200, n_val=40, seed=3)


# --- image preprocessing -------------------------------------------------------------------------


def test_preprocess_pads_wide_image_with_clip_mean() -> None:
    color = (200, 10, 30)
    out = preprocess_images([Image.new("RGB", (40, 20), color)], 16)
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    for c in range(3):
        # 40x40 canvas with the image in rows 10..29 -> resized 16x16: top/bottom rows are pad, centre is image.
        assert out[0, c, 0].tolist() == pytest.approx([_norm(PAD_COLOR[c], c)] * 16, abs=1e-6)
        assert out[0, c, 15].tolist() == pytest.approx([_norm(PAD_COLOR[c], c)] * 16, abs=1e-6)
        assert out[0, c, 8, 8].item() == pytest.approx(_norm(color[c], c), abs=1e-6)
    assert out[0, 0, 8, 8].item() == pytest.approx((200 / 255 - 0.48145466) / 0.26862954, abs=1e-6)


def test_preprocess_integer_offsets_and_identity_for_square() -> None:
    # 3x1: canvas 3x3, offset ((3-3)//2, (3-1)//2) = (0, 1); no resize at image_size 3.
    img = Image.new("RGB", (3, 1))
    img.putdata([(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    out = preprocess_images([img], 3)[0]
    assert out[0, 1].tolist() == pytest.approx([_norm(v, 0) for v in (10, 40, 70)], abs=1e-6)
    assert out[2, 0].tolist() == pytest.approx([_norm(PAD_COLOR[2], 2)] * 3, abs=1e-6)
    assert out[1, 2].tolist() == pytest.approx([_norm(PAD_COLOR[1], 1)] * 3, abs=1e-6)
    # 2x1: offset (2-1)//2 = 0 rounds down, so the image is the top row.
    out = preprocess_images([Image.new("L", (2, 1), 7)], 2)[0]  # grayscale is converted to RGB
    assert out[:, 0].flatten().tolist() == pytest.approx(
        [_norm(7, c) for c in range(3) for _ in range(2)], abs=1e-6
    )
    assert out[0, 1].tolist() == pytest.approx([_norm(PAD_COLOR[0], 0)] * 2, abs=1e-6)
    assert preprocess_images([], 5).shape == (0, 3, 5, 5)


# --- v1 template ---------------------------------------------------------------------------------


def _supervised_runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def test_single_turn_labels_supervise_answer_and_eos(tokenizer: Tokenizer) -> None:
    ids, labels = tokenize_conversation([("<image>\nWhat color is the shape?", "red")], tokenizer)
    assert len(ids) == len(labels)
    assert ids[0] == tokenizer.bos_id and labels[0] == IGNORE_INDEX
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    assert _supervised_runs(labels) == [tokenizer.encode("red") + [tokenizer.eos_id]]
    assert tokenizer.decode(_supervised_runs(labels)[0]) == "red"
    assert ids[-1] == tokenizer.eos_id
    prompt = build_prompt_ids("<image>\nWhat color is the shape?", tokenizer)
    assert ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt)])
    assert all(label != IGNORE_INDEX for label in labels[len(prompt) :])
    assert tokenizer.decode(prompt).endswith("What color is the shape? ASSISTANT:")
    assert tokenizer.decode(prompt).startswith("A chat between a curious user")


def test_placeholder_position_is_normalised(tokenizer: Tokenizer) -> None:
    front = build_prompt_ids("<image>\nWhat shape is this?", tokenizer)
    assert build_prompt_ids("What shape is this?\n<image>", tokenizer) == front
    assert move_image_to_front("What shape <image> is this?") == "<image>\nWhat shape  is this?"
    assert move_image_to_front("No image here.") == "No image here."
    # The slot comes right after "USER:".
    user = tokenizer.encode(" USER:")
    slot = front.index(IMAGE_TOKEN_INDEX)
    assert front[slot - len(user) : slot] == user
    with pytest.raises(UserError, match="2 times"):
        build_prompt_ids("<image> a <image>", tokenizer)


def test_multi_turn_labels(tokenizer: Tokenizer) -> None:
    turns = [("<image>\nWhat shape is this?", "circle"), ("What color is the shape?", "blue")]
    ids, labels = tokenize_conversation(turns, tokenizer)
    eos = tokenizer.eos_id
    assert _supervised_runs(labels) == [tokenizer.encode("circle") + [eos], tokenizer.encode("blue") + [eos]]
    assert [tokenizer.decode(run) for run in _supervised_runs(labels)] == ["circle", "blue"]
    first_eos = ids.index(eos)
    second_prompt = tokenizer.encode("USER: What color is the shape? ASSISTANT:")
    assert ids[first_eos + 1 : first_eos + 1 + len(second_prompt)] == second_prompt
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    text_only, _ = tokenize_conversation([("Say hi.", "hi")], tokenizer)
    assert IMAGE_TOKEN_INDEX not in text_only


def test_truncation_drops_whole_trailing_turns(tokenizer: Tokenizer) -> None:
    turns = [
        ("<image>\nWhat shape is this?", "circle"),
        ("Count the shapes.", "one"),
        ("Which side?", "left"),
    ]
    n_img = 10
    full, _ = tokenize_conversation(turns, tokenizer, num_image_tokens=n_img)
    two, _ = tokenize_conversation(turns[:2], tokenizer, num_image_tokens=n_img)
    one, _ = tokenize_conversation(turns[:1], tokenizer, num_image_tokens=n_img)
    spliced = {name: len(ids) + n_img - 1 for name, ids in (("full", full), ("two", two), ("one", one))}

    assert (
        tokenize_conversation(turns, tokenizer, num_image_tokens=n_img, max_length=spliced["full"])[0] == full
    )
    # One token short of the full conversation: the whole third turn goes, not just its last token.
    ids, labels = tokenize_conversation(
        turns, tokenizer, num_image_tokens=n_img, max_length=spliced["full"] - 1
    )
    assert ids == two
    assert [tokenizer.decode(r) for r in _supervised_runs(labels)] == ["circle", "one"]
    ids, _ = tokenize_conversation(turns, tokenizer, num_image_tokens=n_img, max_length=spliced["two"] - 1)
    assert ids == one

    # The first turn alone too long: its answer is cut but keeps at least one supervised token.
    prompt_len = len(build_prompt_ids(turns[0][0], tokenizer)) + n_img - 1
    ids, labels = tokenize_conversation(turns, tokenizer, num_image_tokens=n_img, max_length=prompt_len + 1)
    assert len(ids) + n_img - 1 == prompt_len + 1
    assert sum(label != IGNORE_INDEX for label in labels) == 1
    with pytest.raises(UserError) as err:
        tokenize_conversation(
            turns,
            tokenizer,
            num_image_tokens=n_img,
            max_length=prompt_len,
            sample="4 (id 'x')",
            path="d.json",
        )
    message = str(err.value)
    assert f"sequence longer than --max-length ({spliced['one']} > {prompt_len})" in message
    assert "d.json" in message and "sample 4 (id 'x')" in message and "raise --max-length" in message


# --- LLaVA loading -------------------------------------------------------------------------------


def _png(path: Path, color: tuple[int, int, int] = (1, 2, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


def _record(sample_id: object = "good", image: str | None = "a.png", turns: list | None = None) -> dict:
    record: dict = {"id": sample_id}
    if image is not None:
        record["image"] = image
    q = "<image>\nWhat is it?" if image is not None else "What is it?"
    record["conversations"] = (
        turns if turns is not None else [{"from": "human", "value": q}, {"from": "gpt", "value": "a cat"}]
    )
    return record


def _h(value: str) -> dict:
    return {"from": "human", "value": value}


def _g(value: str) -> dict:
    return {"from": "gpt", "value": value}


def _write(path: Path, records: object) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_load_llava_valid(tmp_path: Path) -> None:
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "sub" / "b.png")
    records = [
        _record("first"),
        _record(7, image="sub/b.png", turns=[_h("Where?\n<image>"), _g("here"), _h("Why?"), _g("because")]),
        _record("text", image=None),
    ]
    convs, skipped = load_llava(_write(tmp_path / "d.json", records), tmp_path / "img")
    assert skipped == []
    assert convs[0] == Conversation(
        "first", 0, Path("a.png"), [("<image>\nWhat is it?", "a cat")], source=tmp_path / "d.json"
    )
    assert convs[1].id == "7" and convs[1].index == 1 and convs[1].image == Path("sub/b.png")
    assert convs[1].turns == [("<image>\nWhere?", "here"), ("Why?", "because")]
    assert convs[2].image is None and convs[2].turns == [("What is it?", "a cat")]
    assert convs[1].label == "1 (id '7')"


BAD_RECORDS = [
    # (record, field, message fragment)
    ({"image": "a.png", "conversations": [_h("<image>\nQ"), _g("A")]}, "id", "missing or empty sample id"),
    (_record("bad", turns=[]), "conversations", "missing or empty conversation"),
    ({"id": "bad", "image": "a.png"}, "conversations", "missing or empty conversation"),
    (
        _record("bad", turns=[{"from": "user", "value": "<image>\nQ"}, _g("A")]),
        "conversations[0].from",
        "unknown speaker 'user'",
    ),
    (_record("bad", turns=[_h("<image>\nQ"), _h("Q2")]), "conversations[1].from", "do not alternate"),
    (_record("bad", turns=[_g("A"), _h("<image>\nQ")]), "conversations[0].from", "do not alternate"),
    (_record("bad", turns=[_h("<image>\nQ"), _g("A"), _h("Q2")]), "conversations", "without an answer"),
    (_record("bad", turns=[_h("<image>\nQ"), _g("  ")]), "conversations[1].value", "missing or empty text"),
    (_record("bad", turns=[_h("Q"), _g("A")]), "conversations[0].value", "no '<image>' placeholder"),
    (_record("bad", turns=[_h("<image>\nQ <image>"), _g("A")]), "conversations[0].value", "appears 2 times"),
    (
        _record("bad", turns=[_h("<image>\nQ"), _g("A"), _h("<image>Q2"), _g("A2")]),
        "conversations[2].value",
        "appears 2 times",
    ),
    (
        _record("bad", turns=[_h("Q"), _g("A"), _h("<image>Q2"), _g("A2")]),
        "conversations[2].value",
        "first human turn",
    ),
    (
        _record("bad", image=None, turns=[_h("<image>\nQ"), _g("A")]),
        "conversations[0].value",
        "has no 'image'",
    ),
    (_record("bad", image=""), "image", "non-empty path"),
    (_record("bad", image="missing.png"), "image", "image file not found"),
    (_record("bad", image="garbage.png"), "image", "cannot be decoded"),
    (_record("bad", image="truncated.png"), "image", "cannot be decoded"),
]


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "img"
    _png(folder / "a.png")
    (folder / "garbage.png").write_bytes(b"this is not a png")
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big.save(folder / "full.png")
    blob = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(blob[: len(blob) // 2])
    return folder


@pytest.mark.parametrize(("record", "field", "fragment"), BAD_RECORDS)
def test_load_llava_rejects_bad_sample(
    tmp_path: Path, image_folder: Path, record: dict, field: str, fragment: str
) -> None:
    path = _write(tmp_path / "data.json", [_record("good"), record])
    with pytest.raises(UserError) as err:
        load_llava(path, image_folder)
    message = str(err.value)
    assert str(path) in message
    assert "sample 1" in message
    if "id" in record:
        assert "(id 'bad')" in message
    assert f"field '{field}'" in message
    assert fragment in message
    assert "hint:" in message


def test_load_llava_rejects_non_object_sample(tmp_path: Path, image_folder: Path) -> None:
    path = _write(tmp_path / "data.json", [_record("good"), ["not", "a", "dict"]])
    with pytest.raises(UserError, match=r"data\.json: sample 1: a sample must be a JSON object, got a list"):
        load_llava(path, image_folder)


def test_skip_bad_collects_reasons_and_keeps_good_samples(tmp_path: Path, image_folder: Path) -> None:
    bad = [record for record, _, _ in BAD_RECORDS]
    records = [_record("good-0"), *bad, "oops", _record("good-1", image=None)]
    convs, skipped = load_llava(_write(tmp_path / "data.json", records), image_folder, skip_bad=True)
    assert [c.id for c in convs] == ["good-0", "good-1"]
    assert [c.index for c in convs] == [0, len(records) - 1]
    assert len(skipped) == len(bad) + 1
    for i, reason in enumerate(skipped, start=1):
        assert f"sample {i}" in reason and str(tmp_path / "data.json") in reason
    with pytest.raises(UserError, match="no usable samples"):
        load_llava(_write(tmp_path / "bad.json", bad), image_folder, skip_bad=True)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('[{"id": "a",\n "image": "a.png",\n  "conversations": [}]', "invalid JSON at line 3, column 21"),
        ('{"id": "a"}', "top level must be a list of samples, got a JSON object"),
        ("[]", "contains no samples"),
    ],
)
def test_load_llava_file_level_errors_always_raise(
    tmp_path: Path, image_folder: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_llava(path, image_folder, skip_bad=True)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_load_llava_missing_file_and_folder(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(UserError, match="nope.json: data file not found"):
        load_llava(tmp_path / "nope.json", image_folder)
    path = _write(tmp_path / "data.json", [_record("good")])
    with pytest.raises(UserError, match="no-such-folder: image folder not found"):
        load_llava(path, tmp_path / "no-such-folder", skip_bad=True)


# --- dataset and collation -----------------------------------------------------------------------


def test_dataset_items(tokenizer: Tokenizer, synth: dict) -> None:
    convs, _ = load_llava(synth["val_json"], synth["image_folder"])
    ds = SupervisedDataset(convs, tokenizer, synth["image_folder"], 32, 16, 256)
    assert len(ds) == 40 and ds.skipped == []
    item = ds[0]
    assert set(item) == {"input_ids", "labels", "pixel_values", "id", "answer", "prompt_ids"}
    assert item["id"] == "val-00000"
    record = json.loads(Path(synth["val_json"]).read_text())[0]
    assert item["answer"] == record["conversations"][1]["value"]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.float32
    assert item["input_ids"].dtype == torch.long and item["labels"].shape == item["input_ids"].shape
    n = len(item["prompt_ids"])
    assert torch.equal(item["input_ids"][:n], item["prompt_ids"])
    first_answer = item["labels"][n : n + len(tokenizer.encode(item["answer"]))].tolist()
    assert tokenizer.decode(first_answer) == item["answer"]


def test_dataset_too_long_samples(tokenizer: Tokenizer) -> None:
    short = Conversation("s", 0, None, [("Count the shapes.", "two")], source=Path("d.json"))
    long = Conversation("l", 1, None, [("Count the shapes. " * 20, "two")], source=Path("d.json"))
    limit = len(build_prompt_ids(short.turns[0][0], tokenizer)) + 5
    with pytest.raises(UserError, match=r"d\.json: sample 1 \(id 'l'\).*sequence longer than --max-length"):
        SupervisedDataset([short, long], tokenizer, ".", 32, 16, limit)
    ds = SupervisedDataset([short, long], tokenizer, ".", 32, 16, limit, skip_bad=True)
    assert len(ds) == 1 and ds[0]["id"] == "s" and ds[0]["pixel_values"] is None
    assert len(ds.skipped) == 1 and "id 'l'" in ds.skipped[0]


def test_collate_pads_and_stacks_images_in_order(tokenizer: Tokenizer, synth: dict) -> None:
    convs, _ = load_llava(synth["val_json"], synth["image_folder"])
    text = Conversation("t", 99, None, [("Say something long enough to be the longest sample here.", "ok")])
    ds = SupervisedDataset([convs[0], text, convs[1]], tokenizer, synth["image_folder"], 32, 16, 256)
    loader = DataLoader(
        ds, batch_size=3, collate_fn=functools.partial(collate_batch, pad_id=tokenizer.pad_id)
    )
    batch = next(iter(loader))
    lengths = [len(ds[i]["input_ids"]) for i in range(3)]
    assert (
        batch["input_ids"].shape
        == batch["labels"].shape
        == batch["attention_mask"].shape
        == (3, max(lengths))
    )
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert torch.equal(batch["input_ids"][row, :n], ds[row]["input_ids"])
        assert batch["input_ids"][row, n:].eq(tokenizer.pad_id).all()
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert torch.equal(batch["pixel_values"][1], ds[2]["pixel_values"])
    assert batch["ids"] == [convs[0].id, "t", convs[1].id]
    assert collate_batch([ds[1]], pad_id=0)["pixel_values"] is None


# --- synthetic dataset ---------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synth_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", n_train=30, n_val=6, seed=5)
    write_synthetic_dataset(tmp_path / "b", n_train=30, n_val=6, seed=5)
    write_synthetic_dataset(tmp_path / "c", n_train=30, n_val=6, seed=6)
    files = _files(tmp_path / "a")
    assert len(files) == 36 + 2 + 1 and files == _files(tmp_path / "b")  # + the output marker
    assert files["train.json"] != _files(tmp_path / "c")["train.json"]
    assert not [p for p in (tmp_path / "a").rglob("*.tmp")]
    assert a["n_train"] == 30 and a["n_val"] == 6 and a["train_json"] == tmp_path / "a" / "train.json"


def test_synth_answers_match_images_and_are_balanced(synth: dict) -> None:
    records = json.loads(Path(synth["train_json"]).read_text())
    convs, skipped = load_llava(synth["train_json"], synth["image_folder"])  # valid LLaVA
    assert len(convs) == 200 and skipped == []
    types = Counter()
    answers: dict[str, Counter] = {t: Counter() for t in QUESTIONS}
    for record in records:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n")
        for human, gpt in zip(turns[0::2], turns[1::2], strict=True):
            qtype = question_type(human["value"])
            answer = gpt["value"]
            assert answer in QUESTIONS[qtype][1] and answer == answer.lower() and " " not in answer
            answers[qtype][answer] += 1
        types[question_type(turns[0]["value"])] += 1

        pixels = np.asarray(Image.open(Path(synth["image_folder"]) / record["image"]))
        assert pixels.shape == (64, 64, 3)
        facts = {question_type(h["value"]): g["value"] for h, g in zip(turns[0::2], turns[1::2], strict=True)}
        drawn = np.argwhere((pixels != 255).any(axis=2))
        if "position" in facts:
            assert (drawn[:, 1].mean() < 32) == (facts["position"] == "left")
        if "color" in facts:  # single shape, no anti-aliasing: every drawn pixel has its colour
            assert {tuple(p) for p in pixels[drawn[:, 0], drawn[:, 1]]} == {COLORS[facts["color"]]}
    assert all(30 <= types[t] <= 70 for t in QUESTIONS), types
    assert all(len(answers[t]) == len(QUESTIONS[t][1]) for t in QUESTIONS), answers
    assert 5 <= synth["n_train_multi_turn"] <= 40
    expected = sum(types[t] / len(QUESTIONS[t][1]) for t in QUESTIONS) / 200
    assert chance_accuracy(synth["train_json"]) == pytest.approx(expected)
    assert 0.25 < expected < 0.45


def test_corpus_covers_every_generated_word(tokenizer: Tokenizer) -> None:
    corpus = set(" ".join(corpus_lines()).split())
    for phrasings, answers in QUESTIONS.values():
        for text in (*phrasings, *answers):
            assert set(text.split()) <= corpus
    assert {"USER:", "ASSISTANT:", "curious", "polite"} <= corpus
    # With the corpus-trained tokenizer every generated word is a single piece or a few, never bytes.
    assert len(tokenizer.encode("What color is the shape?")) <= 8
