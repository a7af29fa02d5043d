"""The quality benchmark (benchmarks/quality): its tasks are right, its budgets are equal, its
published table is the JSON's, and the pipeline runs end to end and resumes from its cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.quality import tasks
from benchmarks.quality.methods import METHODS, adapter_budget, match_ring_ranks
from benchmarks.quality.report import render_markdown, summarize
from mobilepeft.data.synth import COLORS

ROOT = Path(__file__).resolve().parents[1]


def test_digits_task_uses_the_real_scans_with_disjoint_splits(tmp_path):
    from sklearn.datasets import load_digits

    files = tasks.write_digits_task(tmp_path, n_train=60, n_test=30)
    train, test = (json.loads(files[s].read_text()) for s in ("train", "test"))
    assert not {r["image"] for r in train} & {r["image"] for r in test}
    digits = load_digits()
    for record in train + test:
        index = int(record["image"].split("_")[1].split(".")[0])
        digit, answer = int(digits.target[index]), record["conversations"][1]["value"]
        expected = {"digit": str(digit), "even": "yes" if digit % 2 == 0 else "no", "plus_one": str(digit + 1)}
        assert answer == expected[record["question_type"]]
        # the image is the scan: ink where the scan has ink (dark on white)
        pixels = np.asarray(Image.open(tmp_path / record["image"]).convert("L").resize((8, 8), Image.Resampling.BOX))
        assert np.corrcoef(pixels.flatten(), -digits.images[index].flatten())[0, 1] > 0.8
    counts = {t: sum(r["question_type"] == t for r in test) for t in tasks.DIGIT_QUESTIONS}
    assert counts == {"digit": 10, "even": 10, "plus_one": 10}


def _blobs(image: np.ndarray, color: str) -> list[np.ndarray]:
    """Pixel coordinates of each connected region of ``color``."""
    from scipy import ndimage

    mask = (np.abs(image.astype(int) - np.array(COLORS[color])).sum(axis=2) < 40)
    labels, n = ndimage.label(mask)
    return [np.argwhere(labels == k) for k in range(1, n + 1) if (labels == k).sum() > 20]


def test_relations_answers_agree_with_the_pixels(tmp_path):
    files = tasks.write_relations_task(tmp_path, n_train=90, n_test=3)
    for record in json.loads(files["train"].read_text()):
        image = np.asarray(Image.open(tmp_path / record["image"]).convert("RGB"))
        question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        if record["question_type"] == "count_left":
            left = [b for c in tasks.REL_COLORS for b in _blobs(image, c) if b[:, 1].mean() < 32]
            assert tasks.COUNT_WORDS[len(left)] == answer
            continue
        color = next(c for c in tasks.REL_COLORS if f" {c} " in question)
        blobs = _blobs(image, color)
        if record["question_type"] == "count_color":
            assert tasks.COUNT_WORDS[len(blobs)] == answer
        else:  # fill ratio of the bounding box: square ~1, circle ~pi/4, triangle ~0.4-0.5
            (blob,) = blobs
            box = np.ptp(blob, axis=0) + 1
            fill = len(blob) / (box[0] * box[1])
            assert answer == ("square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle")


def test_every_lora_family_method_gets_the_same_budget(tiny_ckpt):
    lora = adapter_budget(tiny_ckpt, METHODS["lora"][1], 8)
    assert lora == 8 * 4 * (256 + 192 + 192 + 256 + 3 * 480)  # r (in + out) over 7 linears x 4 layers
    for name in ("hydra", "hierarchical", "dynamic"):
        assert adapter_budget(tiny_ckpt, METHODS[name][1], 8) == lora, name
    # Hydra multi-head: the sequential branch maps out -> out, so non-square layers cost r_s (out - in) more
    assert adapter_budget(tiny_ckpt, METHODS["multihead"][1], 8) - lora == 4 * 4 * (2 * -64 + 2 * 224 - 224)
    # DMLoRA: its branches share the rank; + one learning scalar per layer
    assert adapter_budget(tiny_ckpt, METHODS["dmlora"][1], 8) - lora == 28
    pattern, ring, target = match_ring_ranks(tiny_ckpt, 8)
    assert target == lora and abs(ring / lora - 1) < 0.02
    assert adapter_budget(tiny_ckpt, {**METHODS["adaring"][1], "ring_rank_pattern": pattern}, 8) == ring


def test_published_table_is_rendered_from_the_published_json():
    """docs/results.md is exactly what the renderer makes of docs/results/quality.json, whose
    summary is what its raw runs give: a number in the table cannot drift from the data."""
    results = json.loads((ROOT / "docs" / "results" / "quality.json").read_text())
    assert summarize(results) == results["summary"]
    page = render_markdown(results, json_link="results/quality.json", png_link="results/quality.png")
    assert (ROOT / "docs" / "results.md").read_text() == page
    assert len(results["settings"]["seeds"]) >= 3 and results["wall_seconds"] <= 3600
    assert set(results["settings"]["methods"]) == set(METHODS)
    assert (ROOT / "docs" / "results" / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_runs_end_to_end_and_resumes_from_its_cache(tmp_path, capsys):
    from benchmarks.quality.pretrain import PretrainSettings
    from benchmarks.quality.run import QualitySettings, run

    settings = QualitySettings(seeds=(0,), methods=("lora", "full"), tasks=("relations",), steps=4, n_train=32,
                               n_test=12, pretrain=PretrainSettings(n_train=48, n_val=8, stage1_steps=2, stage2_steps=3))
    first = run(settings, tmp_path, workers=1)
    assert [(r["method"], r["steps"]) for r in first["runs"]] == [("lora", 4), ("full", 4)]
    assert first["summary"]["relations"]["full"]["trainable_parameters"] > 5 * first["summary"]["relations"]["lora"]["trainable_parameters"]
    assert first["pretrain"]["cached"] is False
    capsys.readouterr()
    second = run(settings, tmp_path, workers=1)
    assert "2 cached, 0 to train" in capsys.readouterr().out
    assert second["pretrain"]["cached"] is True
    assert second["runs"] == first["runs"]
    assert 0.0 <= second["summary"]["relations"]["lora"]["accuracy_mean"] <= 1.0


def test_gpu_recipe_runs_every_step_on_a_tiny_model(tiny_ckpt, synth_data, tmp_path):
    """gpu_recipe.sh end to end on CPU (tiny model, 2 methods, 1 seed): train, eval, collect."""
    import os
    import subprocess
    import sys

    train = tmp_path / "train.json"
    train.write_text(json.dumps(json.loads((synth_data / "train.json").read_text())[:24]))
    val = tmp_path / "val.json"
    val.write_text(json.dumps(json.loads((synth_data / "val.json").read_text())[:10]))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "PY": sys.executable,
           "MODEL": str(tiny_ckpt), "TRAIN": str(train), "IMAGES": str(synth_data), "OUT": str(tmp_path / "out"),
           "EVALS": f"synth|{val}|{synth_data}|", "METHODS": "lora adaring full", "SEEDS": "0", "LORA_RANK": "4",
           "BATCH": "8", "GLOBAL_BATCH": "8"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "quality" / "gpu_recipe.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) == {"lora", "adaring", "full"}
    for method, per in summary.items():
        scores = json.loads((tmp_path / "out" / method / "seed0" / "eval-synth.json").read_text())
        assert per["synth"]["mean"] == scores["overall"]["vqa_accuracy"] and scores["overall"]["n"] == 10
    assert (tmp_path / "out" / "full" / "seed0" / "model" / "config.json").is_file()
    assert "| LoRA (fixed rank) |" in proc.stdout and "AdaRing" in (tmp_path / "out" / "budget.txt").read_text()
