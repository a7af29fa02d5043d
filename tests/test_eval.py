"""`mobilepeft eval`: answer metrics, the evaluation-set formats it reads, and that it scores a
trained adapter exactly as training's own validation does."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mobilepeft.errors import UserError
from mobilepeft.evaluation.eval_set import load_eval_set
from mobilepeft.evaluation.metrics import exact_match, vqa_accuracy, vqa_normalize
from mobilepeft.evaluation.vqa import evaluate_answers, score


def test_vqa_normalisation_and_consensus_accuracy():
    assert vqa_normalize("Two dogs.") == "2 dogs"
    assert vqa_normalize("The  man's hat!") == "man's hat"
    assert vqa_normalize("dont") == "don't"
    assert vqa_normalize("3.5") == "3.5"
    assert vqa_normalize("1,000") == "1000"
    # ten annotators, three said "two": leaving one of those out leaves two matches (2/3), any other three (1)
    answers = ["two"] * 3 + ["3"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("three", answers) == pytest.approx(1.0)
    assert vqa_accuracy("Red.", ["red"]) == 1.0 and vqa_accuracy("blue", ["red"]) == 0.0
    # exact match compares with the most common reference, after trimming case and punctuation
    assert exact_match("3.", answers) == 1.0 and exact_match("two", answers) == 0.0
    assert exact_match("Red!", ["red"]) == 1.0


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(path)


def test_reads_llava_question_files_with_separate_answers(tmp_path):
    _image(tmp_path / "img" / "a.png")
    questions = tmp_path / "llava_gqa_testdev.jsonl"
    questions.write_text(
        json.dumps({"question_id": "q1", "image": "a.png", "text": "What color is it?", "category": "attr"}) + "\n\n"
        + json.dumps({"question_id": 7, "text": "Is the sky blue?"}) + "\n")
    gqa = tmp_path / "testdev_balanced_questions.json"
    gqa.write_text(json.dumps({"q1": {"answer": "red", "question": "..."}, "7": {"answer": "yes"}}))
    items = load_eval_set(questions, tmp_path / "img", gqa)
    assert [(i.question_id, i.question, i.answers, i.question_type) for i in items] == [
        ("q1", "<image>\nWhat color is it?", ("red",), "attr"), ("7", "Is the sky blue?", ("yes",), "all")]
    textvqa = tmp_path / "TextVQA_val.json"
    textvqa.write_text(json.dumps({"data": [{"question_id": "q1", "answers": ["Red", "red", "maroon"]},
                                            {"question_id": 7, "answers": [{"answer": "yes"}]}]}))
    assert load_eval_set(questions, tmp_path / "img", textvqa)[0].answers == ("Red", "red", "maroon")

    # predictions scored per type: "attr" right, "all" wrong
    report = score(items, ["Red", "no"])
    assert report.overall.n == 2 and report.overall.exact_match == 0.5
    assert report.by_type["attr"].exact_match == 1.0 and report.by_type["all"].exact_match == 0.0


def test_eval_set_errors_say_where(tmp_path):
    _image(tmp_path / "a.png")
    no_answer = tmp_path / "q.jsonl"
    no_answer.write_text(json.dumps({"question_id": "q1", "image": "a.png", "text": "What?"}) + "\n")
    with pytest.raises(UserError, match=r"q.jsonl: sample 0 \(id 'q1'\): field 'answer': no reference answer") as err:
        load_eval_set(no_answer, tmp_path)
    assert "--answers" in str(err.value)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"question_id": "q1", "text": "x", "answer": "y"}\n{"question_id": \n')
    with pytest.raises(UserError, match="invalid JSON on line 2"):
        load_eval_set(broken, tmp_path)
    dup = tmp_path / "d.json"
    dup.write_text(json.dumps([{"question_id": "q", "text": "x", "answer": "y"}] * 2))
    with pytest.raises(UserError, match="duplicate question id 'q'"):
        load_eval_set(dup, tmp_path)
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps([{"question_id": "q", "image": "nope.png", "text": "x", "answer": "y"}]))
    with pytest.raises(UserError, match="sample 0 .*image file not found"):
        load_eval_set(missing, tmp_path)


@pytest.fixture(scope="module")
def trained(tiny_ckpt, synth_data, tmp_path_factory):
    from mobilepeft.train.config import TrainConfig
    from mobilepeft.train.trainer import Trainer

    out = tmp_path_factory.mktemp("eval-run")
    cfg = TrainConfig.from_flat(dict(model=str(tiny_ckpt), data=str(synth_data / "train.json"), image_folder=str(synth_data),
                      eval_data=str(synth_data / "val.json"), output_dir=str(out), rank=4, alpha=8, max_steps=60,
                      batch_size=16, lr=3e-3, max_length=256, save_every=0, schedule="fixed", eval_batch_size=32))
    cfg.validate()
    return Trainer(cfg, progress=False).run()


def test_eval_scores_an_adapter_as_training_validation_does(tiny_ckpt, synth_data, trained):
    from mobilepeft.loading import load_vlm

    model = load_vlm(tiny_ckpt, adapter=trained.adapter_dir)
    items = load_eval_set(synth_data / "val.json", synth_data)
    report = evaluate_answers(model, items, synth_data, batch_size=7, max_new_tokens=8)
    print(f"eval accuracy {report.overall.exact_match:.3f}, trainer's {trained.eval_after['accuracy']:.3f}")
    assert report.overall.n == 96
    assert report.overall.exact_match == pytest.approx(trained.eval_after["accuracy"], abs=1e-9)
    assert report.overall.exact_match > trained.eval_before["accuracy"] + 0.1
    # the synthetic set records each question's type: the breakdown covers them all
    assert set(report.by_type) == {"color", "shape", "count", "position"}
    assert sum(s.n for s in report.by_type.values()) == 96
    weighted = sum(s.n * s.exact_match for s in report.by_type.values()) / 96
    assert weighted == pytest.approx(report.overall.exact_match)


def test_eval_cli_writes_answers_and_scores(tiny_ckpt, synth_data, trained, tmp_path):
    from typer.testing import CliRunner

    from mobilepeft.export.cli import app

    answers, scores = tmp_path / "answers.jsonl", tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_ckpt), "--adapter", str(trained.adapter_dir),
                                      "--data", str(synth_data / "val.json"), "--limit", "40",
                                      "--output", str(answers), "--metrics-json", str(scores)])
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "exact match" in result.output
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    data = json.loads(scores.read_text())
    assert len(rows) == 40 and data["overall"]["n"] == 40
    assert data["overall"]["exact_match"] == pytest.approx(sum(r["exact_match"] for r in rows) / 40)
    assert f"{100 * data['overall']['exact_match']:.2f}%" in result.output
    bad = CliRunner().invoke(app, ["eval", "--model", str(tiny_ckpt), "--data", str(tmp_path / "none.json")])
    assert isinstance(bad.exception, UserError) and "none.json: data file not found" in str(bad.exception)
