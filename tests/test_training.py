"""Training recipe: it learns, resumes exactly, stops safely on NaN, and honours config precedence."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mobilepeft.data.synth import chance_accuracy
from mobilepeft.errors import UserError
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer, TrainingDiverged


def _cfg(ckpt, data, out, **kw) -> TrainConfig:
    base = dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data), output_dir=str(out),
                batch_size=8, lr=3e-3, max_length=256, save_every=0, log_every=1)
    base.update(kw)
    cfg = TrainConfig.from_flat(base)
    cfg.validate()
    return cfg


def test_lora_learns_the_synthetic_task(tiny_ckpt, synth_data, tmp_path):
    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "run", eval_data=str(synth_data / "val.json"),
               max_steps=120, batch_size=16, warmup_ratio=0.05, eval_batch_size=48, log_every=10, schedule="fixed")
    result = Trainer(cfg, progress=False).run()
    chance = chance_accuracy(synth_data / "val.json")
    before, after = result.eval_before, result.eval_after
    print(f"val loss {before['loss']:.3f} -> {after['loss']:.3f}; accuracy {before['accuracy']:.3f} -> "
          f"{after['accuracy']:.3f} (chance {chance:.3f})")
    assert after["loss"] < 0.25 * before["loss"]
    assert after["accuracy"] >= chance + 0.2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(10, 121, 10))
    assert all(r["samples_per_s"] > 0 for r in train)
    assert (tmp_path / "run" / "train_config.yaml").is_file()


def _trainable(run_dir):
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    return load_file(str(ckpts[-1] / "trainable.safetensors"))


@pytest.mark.parametrize("adapter", ["lora", "dmlora", "adaring"])
def test_resume_after_interruption_equals_straight_run(tiny_ckpt, synth_data, tmp_path, adapter):
    n = 4
    # dropout on and grad accumulation: both RNG state and data order must be restored exactly;
    # dmlora adds RNG branch masks and its learning scalar unfreezes at step n, the resume point
    common = dict(max_steps=2 * n, grad_accum=2, lora_dropout=0.1, save_every=n, adapter=adapter)
    straight = Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "straight", **common), progress=False).run()

    class Crash(Exception):
        pass

    def crash_after_checkpoint(trainer, step, record):
        if step == n + 2:  # two steps past the checkpoint: that work is lost and must be redone
            raise Crash

    with pytest.raises(Crash):
        Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "resumed", **common), progress=False,
                callbacks=[crash_after_checkpoint]).run()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [f"step-{n:07d}"]
    resumed = Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "resumed", resume=True, **common), progress=False).run()
    assert resumed.steps == straight.steps == 2 * n
    a, b = _trainable(tmp_path / "straight"), _trainable(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 40
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * n + 1)), "metrics of the lost steps are replaced, not duplicated"


def test_resume_refuses_changed_settings(tiny_ckpt, synth_data, tmp_path):
    Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "r", max_steps=2, save_every=1), progress=False).run()
    with pytest.raises(UserError, match="lr was 0.003"):
        Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "r", max_steps=2, lr=1e-3, resume=True), progress=False).run()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_ckpt, synth_data, tmp_path):
    def poison(trainer, step, record):
        if step == 2:  # corrupt a trained tensor after the step-2 checkpoint: the next loss is NaN
            next(p for p in trainer.model.parameters() if p.requires_grad).data.fill_(float("nan"))

    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "nan", max_steps=6, save_every=1, keep_checkpoints=10)
    trainer = Trainer(cfg, progress=False, callbacks=[poison])
    with pytest.raises(TrainingDiverged) as err:
        trainer.run()
    assert "step 3" in str(err.value) and "step-0000002" in str(err.value)
    ckpts = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir())
    assert ckpts == ["step-0000001", "step-0000002"]
    good = load_file(str(tmp_path / "nan" / "checkpoints" / "step-0000002" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (tmp_path / "nan" / "adapter").exists()


def test_pretrain_stage_trains_only_the_projector(tiny_ckpt, synth_data, tmp_path):
    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "stage1", stage="pretrain", max_steps=2)
    result = Trainer(cfg, progress=False).run()
    proj = load_file(str(result.adapter_dir / "mm_projector.safetensors"))
    from mobilepeft.models.checkpoint import read_state_dict

    base = read_state_dict(tiny_ckpt)
    assert set(proj) == {k for k in base if k.startswith("model.mm_projector.")}
    assert any(not torch.equal(proj[k], base[k]) for k in proj)
    trained = _trainable(tmp_path / "stage1")
    assert all(k.startswith("mm_projector.") for k in trained)
    # stage II starts from the stage-I projector
    cfg2 = _cfg(tiny_ckpt, synth_data, tmp_path / "stage2", projector=str(result.adapter_dir), max_steps=1, lr=1e-12)
    r2 = Trainer(cfg2, progress=False).run()
    proj2 = load_file(str(r2.adapter_dir / "mm_projector.safetensors"))
    assert max((proj2[k] - proj[k]).abs().max().item() for k in proj) < 1e-6


def test_full_stage_trains_every_llm_weight_and_writes_a_loadable_checkpoint(tiny_ckpt, synth_data, tmp_path):
    """MobileVLM stage II: the LLM and projector train, the vision tower does not; OUT/model/ is a
    checkpoint in the input's layout that computes what the trained model computed."""
    from mobilepeft.loading import load_vlm
    from mobilepeft.models.checkpoint import read_state_dict

    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "full", stage="full", max_steps=30, lr=1e-3, batch_size=16,
               eval_data=str(synth_data / "val.json"), eval_batch_size=48)
    assert cfg.schedule.kind == "fixed"
    trainer = Trainer(cfg, progress=False)
    result = trainer.run()
    print(f"full fine-tuning val loss {result.eval_before['loss']:.3f} -> {result.eval_after['loss']:.3f}")
    assert result.eval_after["loss"] < 0.5 * result.eval_before["loss"]
    assert result.adapter_dir == tmp_path / "full" / "model"
    base, tuned = read_state_dict(tiny_ckpt), read_state_dict(result.adapter_dir)
    assert set(tuned) == set(base)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    llm = {k for k in base if not k.startswith(("model.vision_tower.", "model.mm_projector."))}
    assert changed >= llm  # every LLM tensor (embeddings, norms, head) moved
    assert not any(k.startswith("model.vision_tower.") for k in changed)
    assert any(k.startswith("model.mm_projector.") for k in changed)
    reloaded = load_vlm(result.adapter_dir)
    batch = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        gap = (reloaded(batch).logits - trainer.model.eval()(batch).logits).abs().max().item()
    assert gap < 1e-5
    with pytest.raises(UserError, match="--stage full trains no adapters"):
        _cfg(tiny_ckpt, synth_data, tmp_path / "x", stage="full", schedule="hydra")


def test_full_stage_with_the_vision_tower_writes_the_trained_tower(tiny_ckpt, synth_data, tmp_path):
    """--train-vision-tower (a model built from scratch): every tower tensor moves, OUT/model/ holds them, and the
    reloaded model computes image features as the trained one does. Other stages refuse the switch."""
    from mobilepeft.loading import load_vlm
    from mobilepeft.models.checkpoint import read_state_dict

    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "full", stage="full", train_vision_tower=True, max_steps=6, lr=1e-3)
    trainer = Trainer(cfg, progress=False)
    result = trainer.run()
    base, tuned = read_state_dict(tiny_ckpt), read_state_dict(result.adapter_dir)
    assert set(tuned) == set(base)
    tower = {k for k in base if k.startswith("model.vision_tower.")}
    moved = {k for k in tower if not torch.equal(base[k], tuned[k])}
    # every weight that reaches the loss moves: all but the last encoder layer and the post-norm, which come after
    # the features MobileVLM reads (mm_vision_select_layer -2)
    last = max(int(k.split("encoder.layers.")[1].split(".")[0]) for k in tower if "encoder.layers." in k)
    unused = {k for k in tower if f"encoder.layers.{last}." in k or "post_layernorm" in k}
    assert moved == tower - unused and any(k.endswith("patch_embedding.weight") for k in moved)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        gap = (load_vlm(result.adapter_dir).encode_images(pixels) - trainer.model.eval().encode_images(pixels)).abs().max()
    assert gap.item() < 1e-5
    for stage in ("finetune", "pretrain"):
        with pytest.raises(UserError, match="--train-vision-tower"):
            _cfg(tiny_ckpt, synth_data, tmp_path / "x", stage=stage, train_vision_tower=True)


def test_yaml_config_and_flag_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"model": "m", "data": "d/train.json", "output-dir": "o", "rank": 16,
                                 "lr": 2e-4, "target_modules": ["q_proj", "v_proj"]}))
    cfg = TrainConfig.from_sources(f, {"rank": 4, "lr": None})
    assert (cfg.adapter.rank, cfg.optim.lr, cfg.adapter.target_modules, cfg.data.image_folder) == (4, 2e-4, ["q_proj", "v_proj"], "d")
    f.write_text("batch_sise: 3\n")
    with pytest.raises(UserError, match="unknown option 'batch_sise'"):
        TrainConfig.from_sources(f, {})


def test_device_option_is_checked(tiny_ckpt, synth_data, tmp_path):
    assert _cfg(tiny_ckpt, synth_data, tmp_path / "a").torch_device() == torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not a torch device: 'gpu0'"):
        _cfg(tiny_ckpt, synth_data, tmp_path / "b", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees no CUDA GPU"):
            _cfg(tiny_ckpt, synth_data, tmp_path / "c", device="cuda").torch_device()
