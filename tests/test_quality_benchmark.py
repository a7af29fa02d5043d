"""The quality benchmark (benchmarks/quality): its tasks are right, its budgets are equal, its
published table is the JSON's, and the pipeline runs end to end and resumes from its cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.quality import tasks
from benchmarks.quality.methods import (
    KNOBS,
    METHODS,
    QUICK,
    SCALE_GRID,
    SCALED,
    TABLE,
    VARIANTS,
    adapter_budget,
    default_scale,
    match_ring_ranks,
    train_config,
)
from benchmarks.quality.report import render_markdown, summarize
from mobilepeft.data.synth import COLORS

ROOT = Path(__file__).resolve().parents[1]


def test_digits_task_uses_the_real_scans_with_disjoint_splits(tmp_path):
    from sklearn.datasets import load_digits

    files = tasks.write_digits_task(tmp_path, n_train=60, n_val=12, n_test=30)
    train, val, test = (json.loads(files[s].read_text()) for s in ("train", "val", "test"))
    images = [{r["image"] for r in split} for split in (train, val, test)]
    assert not images[0] & images[1] and not images[0] & images[2] and not images[1] & images[2]
    assert (len(train), len(val), len(test)) == (60, 12, 30)
    digits = load_digits()
    for record in train + val + test:
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
    files = tasks.write_relations_task(tmp_path, n_train=90, n_val=6, n_test=3)
    val = json.loads(files["val"].read_text())
    assert len(val) == 6 and not {r["image"] for r in val} & {r["image"] for r in json.loads(files["train"].read_text())}
    for record in json.loads(files["train"].read_text()) + val:
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


def test_codes_answers_are_the_table_entry_of_what_the_pixels_show(tmp_path):
    """The codes task asks for the code word of the drawn colour x shape (x side): read those back from the
    pixels and look them up. The table deals the eight words out evenly, and test drawings are new."""
    files = tasks.write_codes_task(tmp_path, n_train=60, n_val=6, n_test=10)
    table = tasks.code_table()
    records = [r for split in ("train", "val", "test") for r in json.loads(files[split].read_text())]
    assert [len(json.loads(files[s].read_text())) for s in ("train", "val", "test")] == [60, 6, 10]
    for record in records:
        image = np.asarray(Image.open(tmp_path / record["image"]).convert("RGB"))
        (color, (blob,)), = [(c, b) for c in COLORS if (b := _blobs(image, c))]
        box = np.ptp(blob, axis=0) + 1
        fill = len(blob) / (box[0] * box[1])
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        side = "left" if blob[:, 1].mean() < 32 else "right"
        key = (color, shape) if record["question_type"] == "code" else (color, shape, side)
        assert record["conversations"][1]["value"] == table[key], record["id"]
    pair = [w for k, w in table.items() if len(k) == 2]
    side = [w for k, w in table.items() if len(k) == 3]
    assert max(pair.count(w) for w in tasks.CODE_WORDS) - min(pair.count(w) for w in tasks.CODE_WORDS) <= 1
    assert max(side.count(w) for w in tasks.CODE_WORDS) - min(side.count(w) for w in tasks.CODE_WORDS) <= 1
    assert {r["question_type"] for r in records} == {"code", "code_side"}


def test_every_lora_family_method_gets_the_same_budget(tiny_ckpt):
    lora = adapter_budget(tiny_ckpt, METHODS["lora"][1], 8)
    assert lora == 8 * 4 * (256 + 192 + 192 + 256 + 3 * 480)  # r (in + out) over 7 linears x 4 layers
    for name in ("hydra", "hierarchical", "dynamic", *VARIANTS):
        assert adapter_budget(tiny_ckpt, METHODS[name][1], 8) == lora, name
    # Hydra multi-head: the sequential branch maps out -> out, so non-square layers cost r_s (out - in) more
    assert adapter_budget(tiny_ckpt, METHODS["multihead"][1], 8) - lora == 4 * 4 * (2 * -64 + 2 * 224 - 224)
    # DMLoRA: its branches share the rank; + one learning scalar per layer
    assert adapter_budget(tiny_ckpt, METHODS["dmlora"][1], 8) - lora == 28
    pattern, ring, target = match_ring_ranks(tiny_ckpt, 8)
    assert target == lora and abs(ring / lora - 1) < 0.02
    assert adapter_budget(tiny_ckpt, {**METHODS["adaring"][1], "ring_rank_pattern": pattern}, 8) == ring


@pytest.mark.parametrize("name,page,methods", [("quality", "results.md", TABLE),
                                                ("quality_quick", "results-quick.md", QUICK)])
def test_published_table_is_rendered_from_the_published_json(name, page, methods):
    """docs/results.md (every method) and docs/results-quick.md (``--quick``, which must fit an hour) are exactly
    what the renderer makes of their JSON, whose summary is what its raw runs give: a number in a table cannot
    drift from the data."""
    results = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())
    assert summarize(results) == results["summary"]
    rendered = render_markdown(results, json_link=f"results/{name}.json", png_link=f"results/{name}.png")
    assert (ROOT / "docs" / page).read_text() == rendered
    assert len(results["settings"]["seeds"]) >= 3
    assert set(results["settings"]["methods"]) == set(methods)
    if methods == QUICK:
        assert results["wall_seconds"] <= 3600 and len(results["settings"]["seeds"]) >= 5
    assert (ROOT / "docs" / "results" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_runs_end_to_end_and_resumes_from_its_cache(tmp_path, capsys):
    from benchmarks.quality.pretrain import PretrainSettings
    from benchmarks.quality.run import QualitySettings, run

    settings = QualitySettings(seeds=(0,), methods=("lora", "full"), tasks=("relations",), steps=4, n_train=32,
                               n_val=8, n_test=12, search=False,
                               pretrain=PretrainSettings(n_train=48, n_val=8, stage1_steps=2, stage2_steps=3))
    first = run(settings, tmp_path, workers=1)
    assert [(r["method"], r["steps"]) for r in first["runs"]] == [("lora", 4), ("full", 4)]
    assert [r["hyper"]["lr"] for r in first["runs"]] == [settings.lr, settings.full_lr] and "search" not in first
    assert first["summary"]["relations"]["full"]["trainable_parameters"] > 5 * first["summary"]["relations"]["lora"]["trainable_parameters"]
    assert first["pretrain"]["cached"] is False
    capsys.readouterr()
    second = run(settings, tmp_path, workers=1)
    assert "2 cached, 0 to train" in capsys.readouterr().out
    assert second["pretrain"]["cached"] is True
    assert second["runs"] == first["runs"]
    assert 0.0 <= second["summary"]["relations"]["lora"]["accuracy_mean"] <= 1.0
    # a run stopped after `mobilepeft train` began writing its folder but before its result: retrained from scratch
    lora = next(run_dir.parent for run_dir in tmp_path.glob("runs/*/relations/lora/*/seed0/quality_result.json"))
    (lora / "quality_result.json").unlink()
    assert (lora / "train_config.yaml").is_file()
    third = run(settings, tmp_path, workers=1)
    assert "1 cached, 1 to train" in capsys.readouterr().out
    assert third["runs"][0]["final_train_loss"] == first["runs"][0]["final_train_loss"]
    assert third["runs"][0]["scores"] == first["runs"][0]["scores"]


def _fake_scores(val_of: Callable[[dict], float]) -> Callable[[dict], dict]:
    """A stand-in for training and scoring one run: validation accuracy ``val_of(job)``, test accuracy its
    complement (a test-driven choice would be the worst validation one); the result is cached like a real run's."""

    def score(value: float) -> dict:
        return {"overall": {"exact_match": value, "n": 1},
                "by_type": {t: {"exact_match": value, "n": 1} for t in tasks.REL_QUESTIONS}}

    def train_and_score(job: dict) -> dict:
        val = val_of(job)
        result = {"task": job["task"], "method": job["method"], "seed": job["seed"], "hyper": job["hyper"],
                  "train_seconds": 60.0 * (1 + job["seed"]), "steps": 1, "final_train_loss": 0.0, "trainable_parameters": 1,
                  "val_scores": score(val), "scores": score(1.0 - val)}
        out = Path(job["config"]["output_dir"])
        out.mkdir(parents=True)
        (out / "quality_result.json").write_text(json.dumps(result))
        return result

    return train_and_score


_TINY_PRETRAIN = dict(n_train=48, n_val=8, stage1_steps=2, stage2_steps=3)


def test_search_chooses_on_validation_only_and_the_test_runs_use_the_choice(tmp_path, monkeypatch):
    """The search trains each learning rate, then the knob's other values at the best one, then the adapter scale
    (grown at its top edge while that wins), then the other rates again at a winning non-default value, on one seed,
    and picks the best mean validation accuracy; the final runs train exactly that, and an ablation inherits its
    method's choice. Scores are replaced by a function of the hyperparameters whose best is known, with test scores
    that would pick otherwise: the choice must follow validation. Temperature 1.0 helps most at a higher rate than
    the default's best, so only the last stage finds it; LoRA's best scale is 8, the top of the grid, so 16 is tried."""
    from benchmarks.quality import run as quality_run
    from benchmarks.quality.pretrain import PretrainSettings

    def val_of(job: dict) -> float:
        lr, knobs = job["hyper"]["lr"], job["hyper"]["knobs"]
        assert job["config"]["lr"] == lr and job["config"]["temperature"] == knobs.get("temperature", 0.5)
        assert job["config"]["alpha"] == 16 * knobs.get("alpha_factor", 1.0)
        bonus = {2e-3: 0.1, 4e-3: 0.35}.get(lr, 0.0) if knobs.get("temperature") == 1.0 else 0.0
        if job["method"] == "lora":
            bonus += {0.5: -0.1, 2.0: 0.05, 4.0: 0.1, 8.0: 0.02}.get(knobs.get("alpha_factor"), 0.0)
        return {1e-3: 0.2, 2e-3: 0.6, 4e-3: 0.4}[lr] + bonus

    trained = []
    fake = _fake_scores(val_of)
    monkeypatch.setattr(quality_run, "_train_and_score", lambda job: trained.append(job) or fake(job))
    settings = quality_run.QualitySettings(
        seeds=(0, 1), methods=("lora", "hydra", "dynamic"), tasks=("relations",), steps=2, n_train=16, n_val=4,
        n_test=4, lr_grid=(1e-3, 2e-3, 4e-3), search_seeds=1, pretrain=PretrainSettings(**_TINY_PRETRAIN))
    results = quality_run.run(settings, tmp_path, workers=1)
    search = results["search"]
    # lora: the rate, then the scale s = 1, 4, 8 (alpha factors 0.5, 2, 4 of its default 2), 16 after 8 won, then
    # the other rates again at s = 8
    assert [(c["lr"], c["knobs"].get("alpha_factor")) for c in search["candidates"]["lora"]] == [
        (1e-3, None), (2e-3, None), (4e-3, None), (2e-3, 0.5), (2e-3, 2.0), (2e-3, 4.0), (2e-3, 8.0),
        (1e-3, 4.0), (4e-3, 4.0)]
    assert search["scale_grid"] == [1.0, 2.0, 4.0, 8.0]
    assert search["scales"]["lora"] == {"default": 2.0, "tried": [1.0, 2.0, 4.0, 8.0, 16.0]}
    # hydra: the rate, its temperature's other values at the best rate, the scale (no better: the default stays and
    # the grid does not grow), then the other rates at temperature 1.0
    assert [(c["lr"], c["knobs"]) for c in search["candidates"]["hydra"][3:]] == [
        (2e-3, {"temperature": 0.25}), (2e-3, {"temperature": 1.0}),
        *((2e-3, {"temperature": 1.0, "alpha_factor": f}) for f in (0.5, 2.0, 4.0)),
        (1e-3, {"temperature": 1.0}), (4e-3, {"temperature": 1.0})]
    assert search["rate_again"] == {"lora": {"alpha_factor": 4.0}, "hydra": {"temperature": 1.0}}
    assert "dynamic" not in search["candidates"]
    assert search["chosen"] == {"lora": {"lr": 2e-3, "knobs": {"alpha_factor": 4.0}},
                                "hydra": {"lr": 4e-3, "knobs": {"temperature": 1.0}},
                                "dynamic": {"lr": 4e-3, "knobs": {"temperature": 1.0}}}
    assert {(r["method"], r["hyper"]["lr"], r["seed"]) for r in results["runs"]} == {
        (m, lr, seed) for m, lr in (("lora", 2e-3), ("hydra", 4e-3), ("dynamic", 4e-3)) for seed in (0, 1)}
    assert all(r["hyper"] == search["chosen"][r["method"]] for r in results["runs"])
    # (3 rates + 4 scales + 2 rates) for lora, (3 rates + 2 temperatures + 3 scales + 2 rates) for hydra, then 6
    # test runs of which lora's and hydra's seed 0 are the search's
    assert len(trained) == 9 + 10 + 4
    page = render_markdown({**results, "wall_seconds": 60.0}, json_link="q.json", png_link="q.png")
    assert "| HyDRA (--schedule hydra) | 0.004 | temperature 1.0 | **75.0** | **75.0** |" in page
    assert "| LoRA (fixed rank) | 0.002 | s 8 | **70.0** | **70.0** |" in page
    assert "| LoRA (fixed rank) | 0.002 | s 16 | 62.0 | 62.0 |" in page
    assert "the other rates again at it" in page and "adapter scale s (LoRA's alpha / r) over 1, 2, 4, 8" in page


@pytest.mark.parametrize("search_seeds, chosen_lr, trained_runs", [(1, 4e-3, 3 + 1), (2, 2e-3, 6)])
def test_a_search_over_more_seeds_averages_them(tmp_path, monkeypatch, search_seeds, chosen_lr, trained_runs):
    """One lucky validation seed picks 0.004; averaged over two seeds 0.002 wins. The runs of the second search
    seed are the test runs of that seed (same settings, same cache), so only the third rate's are extra; and the
    run cache key does not depend on how many seeds the search averages."""
    from benchmarks.quality import run as quality_run
    from benchmarks.quality.pretrain import PretrainSettings

    def val_of(job: dict) -> float:
        lr = job["hyper"]["lr"]
        return {1e-3: 0.2, 2e-3: 0.6, 4e-3: 0.4}[lr] + (0.3 if lr == 4e-3 and job["seed"] == 0 else 0.0)

    trained = []
    fake = _fake_scores(val_of)
    monkeypatch.setattr(quality_run, "_train_and_score", lambda job: trained.append(job) or fake(job))
    execute = quality_run._execute  # a pool returns runs as they finish: here always the last seed first
    monkeypatch.setattr(quality_run, "_execute", lambda *a, **k: execute(*a, **k)[::-1])
    settings = quality_run.QualitySettings(
        seeds=(0, 1), methods=("lora",), tasks=("relations",), steps=2, n_train=16, n_val=4, n_test=4,
        lr_grid=(1e-3, 2e-3, 4e-3), scale_grid=(), search_seeds=search_seeds,
        pretrain=PretrainSettings(**_TINY_PRETRAIN))
    results = quality_run.run(settings, tmp_path, workers=1)
    assert results["search"]["chosen"]["lora"]["lr"] == chosen_lr
    assert "scales" not in results["search"] and "scale_grid" not in results["search"]  # every method at its default
    assert results["search"]["seeds"] == list(range(search_seeds))
    by_lr = {c["lr"]: c["val_accuracy_mean"] for c in results["search"]["candidates"]["lora"]}
    assert by_lr[4e-3] == pytest.approx(0.7 if search_seeds == 1 else 0.55)
    if search_seeds == 2:  # each seed's score under its own index, whatever order the runs finished in
        lucky = results["search"]["candidates"]["lora"][2]
        assert lucky["val_accuracy_by_seed"]["relations"] == pytest.approx([0.7, 0.4])
    assert len(trained) == trained_runs
    assert (results["runs_trained"], results["runs_cached"]) == (trained_runs, 3 * search_seeds + 2 - trained_runs)
    # the cost from scratch counts each distinct run once at the time it took (seed s: 60·(1+s) s here), and a
    # second pass that reads every run back from the cache states the same cost
    cost = sum(60.0 * (1 + job["seed"]) for job in trained)
    assert (results["runs_distinct"], results["runs_train_seconds"]) == (trained_runs, cost)
    again = quality_run.run(settings, tmp_path, workers=1)
    assert (again["runs_trained"], again["runs_distinct"], again["runs_train_seconds"]) == (0, trained_runs, cost)
    # the key ignores what only steers the search; a setting that reaches training changes it
    assert settings.run_key() == quality_run.QualitySettings(**{
        **asdict(settings), "search_seeds": 1, "lr_grid": (1e-2,), "full_lr_grid": (1e-4,), "scale_grid": (3.0,), "search": False, "lr": 1.0,
        "full_lr": 1.0, "pretrain": settings.pretrain}).run_key()
    assert settings.run_key() != quality_run.QualitySettings(**{**asdict(settings), "steps": 3,
                                                                  "pretrain": settings.pretrain}).run_key()
    page = render_markdown({**again, "wall_seconds": 60.0}, json_link="q.json", png_link="q.png")
    assert ("seeds 0, 1, averaged" in page) == (search_seeds == 2)
    assert f"its {trained_runs} distinct runs trained for {cost / 3600:.1f} core-hours in all" in page


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


def test_events_summary_counts_moves_and_compares_predicted_with_observed(tmp_path):
    from dataclasses import asdict

    from benchmarks.quality.events import run_key, summarize_events
    from benchmarks.quality.run import QualitySettings, run_dir

    settings = json.loads(json.dumps(asdict(QualitySettings(methods=("lora", "hydra"), tasks=("digits",), seeds=(0, 1)))))
    runs = [{"task": "digits", "method": m, "seed": s, "hyper": {"lr": 0.002, "knobs": {"temperature": 1.0}}}
            for m in ("lora", "hydra") for s in (0, 1)]
    results = {"settings": settings, "runs": runs}
    ranks = {"model.layers.0.self_attn.q_proj": 12, "model.layers.0.self_attn.v_proj": 10,
             "model.layers.0.mlp.up_proj": 4, "model.layers.0.mlp.down_proj": 6,
             "model.layers.1.self_attn.q_proj": 8, "model.layers.1.mlp.up_proj": 2}
    moves = [{"to": "a", "from": ["b"]}]
    for seed, observed in ((0, [0.05, -0.01]), (1, [0.02, None])):
        events = [{"kind": "initial", "moves": [], "ranks": ranks, "observed_loss_change": None},
                  *({"kind": "dynamic", "moves": moves * (i + 1), "ranks": ranks, "predicted_loss_change": -0.02,
                     "observed_loss_change": o} for i, o in enumerate(observed)),
                  {"kind": "dynamic", "moves": [], "ranks": ranks, "predicted_loss_change": 0.0,
                   "observed_loss_change": None}]
        run = runs[2 + seed]
        path = run_dir(tmp_path, run_key(results), "digits", "hydra", run["hyper"], seed) / "rank_history.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"events": events}))
    summary = summarize_events(results, tmp_path)
    assert set(summary) == {"hydra"}  # fixed LoRA has no schedule and no history
    e = summary["hydra"]["digits"]
    assert e["runs"] == 2 and e["moves_per_run"] == 3.0  # 1 + 2 granules in each run
    assert e["events_observed"] == 3 and e["observed_decreases"] == 1
    assert abs(e["observed_mean"] - 0.02) < 1e-12 and e["predicted_mean"] == -0.02
    assert abs(e["first_observed_mean"] - 0.035) < 1e-12  # each run's first observed event: 0.05, 0.02
    assert e["later_events"] == 1 and e["later_observed_mean"] == -0.01 and e["later_decreases"] == 1
    assert e["attention_rank_mean"] == 10.0 and e["mlp_rank_mean"] == 4.0
    assert e["late_half_rank_mean"] == 5.0  # block 1 of blocks 0-1


def _one_base(seed: int, cpu: str, test: dict[str, tuple[float, float]], val: tuple[float, float],
              steps: int = 300) -> dict:
    """A results JSON cut to what bases.py reads: ``test`` per task is (lora, hydra) accuracy over 5 seeds with a
    std of 0.02, ``val`` the best (lora, hydra) mean validation accuracy."""
    settings = {"tasks": list(test), "methods": ["lora", "hydra"], "seeds": [0, 1, 2, 3, 4], "steps": steps,
                "search_seeds": 2, "pretrain": {"seed": seed, "preset": "tiny-deep"}}
    candidates = {m: [{"lr": 0.002, "knobs": {}, "val_accuracy_mean": v - 0.05},
                      {"lr": 0.004, "knobs": {}, "val_accuracy_mean": v}] for m, v in zip(("lora", "hydra"), val, strict=True)}
    summary = {t: {m: {"n_seeds": 5, "accuracy_mean": a, "accuracy_std": 0.02} for m, a in zip(("lora", "hydra"), acc, strict=True)}
               for t, acc in test.items()}
    return {"settings": settings, "meta": {"machine": {"cpu": cpu}},
            "pretrain": {"settings": settings["pretrain"], "stage2_val": {"accuracy": 0.84}},
            "search": {"candidates": candidates, "as": {}}, "summary": summary}


def test_bases_reports_each_base_and_decides_on_validation_only():
    from benchmarks.quality.bases import compare_bases

    won = _one_base(0, "Intel", {"digits": (0.40, 0.45), "codes": (0.30, 0.33)}, val=(0.40, 0.44))
    # a base where HyDRA wins on test but validation prefers LoRA: the default must not follow test
    lost = _one_base(0, "AMD", {"digits": (0.40, 0.42), "codes": (0.30, 0.31)}, val=(0.45, 0.44))
    out = compare_bases({"a.json": won, "b.json": lost})
    a, b = out["bases"]["a.json"], out["bases"]["b.json"]
    assert a["test"]["digits"]["diff"] == pytest.approx(5.0) and a["test"]["codes"]["diff"] == pytest.approx(3.0)
    # SE of the mean of two tasks: each task's sqrt(2 * 2^2 / 5) points, combined and halved
    assert a["test_mean"]["diff"] == pytest.approx(4.0) and a["test_mean"]["se"] == pytest.approx((8 / 5) ** 0.5 / 2 ** 0.5)
    assert a["validation_prefers"] == "hydra" and a["target_met"] and a["validation"]["hydra"]["lr"] == 0.004
    assert b["validation_prefers"] == "lora" and not b["target_met"]  # +1.5 on the mean, but 2 SE is 1.8
    assert b["base"] == {"seed": 0, "cpu": "AMD", "corpus_val_accuracy": 0.84}
    assert a["validation_diff"] == pytest.approx(4.0) and b["validation_diff"] == pytest.approx(-1.0)
    assert out["validation_diff_mean_over_bases"] == pytest.approx(1.5)  # pooled, HyDRA would win: not the rule
    assert out["validation_diff_se_over_bases"] == pytest.approx(2.5)  # sd of (4, -1) over sqrt(2)
    assert out["test_mean_diff_mean_over_bases"] == pytest.approx(2.75)
    assert not out["validation_prefers_method_on_every_base"] and not out["target_met_on_every_base"]
    other_seed = _one_base(1, "Intel", {"digits": (0.40, 0.45), "codes": (0.30, 0.33)}, val=(0.40, 0.44))
    assert compare_bases({"a.json": won, "c.json": other_seed})["validation_prefers_method_on_every_base"]


def test_bases_refuses_runs_that_differ_in_more_than_the_base():
    from benchmarks.quality.bases import compare_bases

    intel = _one_base(0, "Intel", {"digits": (0.4, 0.45)}, val=(0.4, 0.44))
    with pytest.raises(ValueError, match="same base"):
        compare_bases({"a.json": intel, "b.json": intel})
    with pytest.raises(ValueError, match="b.json: protocol differs .* in steps"):
        compare_bases({"a.json": intel, "b.json": _one_base(1, "Intel", {"digits": (0.4, 0.45)}, (0.4, 0.44), 500)})
    with pytest.raises(ValueError, match="at least two bases"):
        compare_bases({"a.json": intel})


@pytest.mark.parametrize("method", sorted(KNOBS))
def test_every_searched_knob_value_reaches_the_training_config(method, tmp_path):
    """A knob the search tries must change the run it trains (else the search compares identical runs)."""
    key, values = KNOBS[method]
    paths = dict(model=tmp_path, data=tmp_path / "train.json", image_folder=tmp_path, output_dir=tmp_path / "run")
    common = dict(seed=0, steps=10, rank=8, lr=1e-3, batch_size=4, ring_rank_pattern={})
    default = train_config(method, **paths, **common)
    for value in values[1:]:
        cfg = train_config(method, **paths, **common, knobs={key: value}).to_flat()
        assert cfg[key] == value != default.to_flat()[key]


@pytest.mark.parametrize("method", SCALED)
def test_every_searched_scale_is_the_scale_the_built_adapter_applies(method, tiny_ckpt, tmp_path):
    """The search names a scale s and reaches it through alpha; the adapter built from the run's settings must
    multiply its update by exactly s (else the methods would not share one grid of scales)."""
    from mobilepeft.adapters.inject import adapter_layers, inject_adapters
    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.mobilevlm import MobileVLMForCausalLM

    pattern, _, _ = match_ring_ranks(tiny_ckpt, 8)
    default = default_scale(method, 8, pattern)
    assert default == (2.0 * 8 / 5**2 if method == "adaring" else 2.0)  # the tiny checkpoint's median ring rank is 5
    for s in (default, *SCALE_GRID):
        cfg = train_config(method, model=tiny_ckpt, data=tmp_path / "train.json", image_folder=tmp_path,
                           output_dir=tmp_path / "run", seed=0, steps=10, rank=8, lr=1e-3, batch_size=4,
                           ring_rank_pattern=pattern, knobs={"alpha_factor": s / default})
        model = MobileVLMForCausalLM(MobileVLMConfig.from_dir(tiny_ckpt))
        inject_adapters(model, cfg.adapter)
        for layer in adapter_layers(model).values():
            applied = float(layer.scalar) if method == "dmlora" else layer.scaling
            if method == "adaring":  # a module type whose ring rank R is not the median's: s x (median / R)^2
                applied *= (layer.cores.ring_rank / 5) ** 2
            assert applied == pytest.approx(s), (method, s)


@pytest.mark.parametrize("flags, search_seeds, scale_grid", [
    ([], 2, (1.0, 2.0, 4.0, 8.0)), (["--quick"], 1, ()), (["--quick", "--search-seeds", "3", "--scale-grid", "2,4"], 3, (2.0, 4.0))])
def test_the_full_table_searches_over_two_seeds_and_the_quick_one_over_one(tmp_path, monkeypatch, flags, search_seeds,
                                                                            scale_grid):
    """The full table's choice averages two validation seeds and searches the adapter scale; the quick subset keeps
    one seed and every method's default scale (the same for LoRA and HyDRA) to stay within the hour."""
    from benchmarks.quality import run as quality_run

    seen = []

    def stop(settings, work, workers):
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(quality_run, "run", stop)
    with pytest.raises(SystemExit):
        quality_run.main([*flags, "--work", str(tmp_path), "--results", str(tmp_path / "q.json")])
    assert seen[0].search_seeds == search_seeds and seen[0].scale_grid == scale_grid
    assert seen[0].methods == (quality_run.QUICK if "--quick" in flags else quality_run.TABLE)
