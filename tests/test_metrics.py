"""Metrics sinks: --report-to tensorboard logs what metrics.jsonl holds, HyDRA's ranks as they
move, continues cleanly across --resume, and is refused up front when the package is missing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from mobilepeft.errors import UserError
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer

#: record key in metrics.jsonl -> TensorBoard tag
TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
        "samples_per_s": "train/samples_per_second", "rank_moves": "hydra/rank_moves",
        "eval_loss": "eval/loss", "eval_accuracy": "eval/accuracy"}


def _cfg(ckpt, data, out, **kw) -> TrainConfig:
    return TrainConfig.from_flat(dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data),
                                      output_dir=str(out), batch_size=8, lr=3e-3, max_length=256, **kw))


@pytest.fixture(scope="module")
def val8(synth_data, tmp_path_factory):
    """8 validation questions: evaluation runs four times per run below, so keep it small."""
    out = tmp_path_factory.mktemp("val8") / "val8.json"
    out.write_text(json.dumps(json.loads((synth_data / "val.json").read_text())[:8]))
    return out


def test_tensorboard_logs_what_metrics_jsonl_holds_and_the_hydra_ranks(tiny_ckpt, synth_data, val8, tmp_path):
    # Probe 2 steps, then reallocations after steps 3, 6 and 9; checkpoint at 6, crash after 8, resume.
    common = dict(max_steps=12, schedule="hydra", probe_steps=2, realloc_every=3, realloc_window=[0.1, 0.9],
                  save_every=6, eval_every=4, eval_data=str(val8), eval_batch_size=8, eval_max_new_tokens=4,
                  report_to="tensorboard")

    class Crash(Exception):
        pass

    def crash(trainer, step, record):
        if step == 8:  # after step 8's evaluation: TensorBoard must forget steps 7-8 of this attempt
            raise Crash

    run = tmp_path / "run"
    with pytest.raises(Crash):
        Trainer(_cfg(tiny_ckpt, synth_data, run, **common), progress=False, callbacks=[crash]).run()
    Trainer(_cfg(tiny_ckpt, synth_data, run, resume=True, **common), progress=False).run()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key, tag in TAGS.items():
        # TensorBoard stores float32: the same numbers, rounded once
        expected = [(r["step"], float(np.float32(r[key]))) for r in records if key in r]
        assert expected and scalars(tag) == expected, tag
    assert [step for step, _ in scalars("train/loss")] == list(range(1, 13))
    assert [step for step, _ in scalars("eval/loss")] == [0, 4, 8, 12]

    history = json.loads((run / "rank_history.json").read_text())["events"]
    assert [e["step"] for e in history] == [0, 2, 3, 6, 9]  # 9: after the resume
    assert history[-1]["ranks"] != history[0]["ranks"]
    rank_tags = {t for t in events.Tags()["scalars"] if t.startswith("hydra/rank/")}
    assert rank_tags == {"hydra/rank/" + name for name in history[0]["ranks"]}
    for name in history[0]["ranks"]:
        assert scalars("hydra/rank/" + name) == [(e["step"], float(e["ranks"][name])) for e in history], name


def test_tensorboard_missing_is_refused_before_anything_is_loaded(tiny_ckpt, synth_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an environment without it sees
    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "run", max_steps=1, report_to="tensorboard")
    with pytest.raises(UserError, match="tensorboard package") as err:
        Trainer(cfg, progress=False).run()
    assert "pip install 'mobilepeft[tensorboard]'" in err.value.hint
    assert not (tmp_path / "run").exists()


def test_report_to_accepts_only_known_trackers(tiny_ckpt, synth_data, tmp_path):
    assert _cfg(tiny_ckpt, synth_data, tmp_path / "a").output.report_to == "none"
    with pytest.raises(UserError, match="must be one of none, tensorboard"):
        _cfg(tiny_ckpt, synth_data, tmp_path / "b", report_to="wandb")
