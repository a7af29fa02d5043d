"""The training config: one declaration per setting gives the flags, the YAML keys (flat and
nested), the checks and the saved train_config.yaml; YAML files of the flat era keep loading."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mobilepeft.adapters.registry import adapter_methods
from mobilepeft.errors import UserError
from mobilepeft.settings import declared, flag_name
from mobilepeft.train.config import TrainConfig, load_yaml

REQUIRED = {"model": "ckpt", "data": "data/train.json", "output_dir": "runs/x"}

# What `mobilepeft train` wrote as train_config.yaml before the config had sections: every flag
# flat, every method's settings with their defaults, an adaring run with the (ignored) rank.
FLAT_ERA = """\
model: ckpt
data: data/train.json
image_folder: data
output_dir: runs/old
eval_data: null
eval_image_folder: null
stage: finetune
adapter: adaring
rank: 8
alpha: 16.0
lora_dropout: 0.05
use_rslora: false
target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
rank_parallel: null
rank_sequential: null
branches: 4
branch_drop_max: 0.5
scalar_lr_ratio: 0.1
ring_rank: 3
ring_rank_pattern: {down_proj: 5}
schedule: fixed
rank_min: null
rank_max: null
rank_granule: 2
temperature: 0.5
probe_steps: 8
realloc_every: 0
realloc_window: [0.1, 0.7]
train_projector: true
projector: null
max_steps: 40
epochs: 1.0
batch_size: 4
grad_accum: 1
global_batch_size: null
lr: 0.003
projector_lr: null
weight_decay: 0.0
warmup_ratio: 0.03
max_grad_norm: 1.0
precision: fp32
device: auto
gradient_checkpointing: false
fsdp: false
compile: false
max_length: 2048
seed: 3
num_workers: null
save_every: 100
keep_checkpoints: 2
eval_every: 0
eval_max_new_tokens: 8
eval_batch_size: 16
log_every: 1
skip_bad_samples: false
resume: false
overwrite: false
"""


def test_every_flag_is_declared_once_and_reaches_its_section():
    table = TrainConfig.flags()
    section_flags = [flag_name(f) for s in dataclasses.fields(TrainConfig) for f, _ in declared(s.default_factory)]
    method_flags = [flag_name(f) for m in adapter_methods().values() for f, _ in declared(m.settings_cls)]
    assert len(set(section_flags + method_flags)) == len(section_flags) + len(method_flags) == len(table)
    assert {"lr", "rank", "lora_dropout", "schedule", "rank_granule", "branches", "ring_rank"} <= set(table)
    cfg = TrainConfig.from_flat({**REQUIRED, "lr": 0.002, "lora_dropout": 0.2, "schedule": "dynamic",
                                 "rank_granule": 4, "adapter": "dmlora", "branches": 2})
    assert (cfg.optim.lr, cfg.adapter.dropout, cfg.schedule.kind, cfg.schedule.granule) == (0.002, 0.2, "dynamic", 4)
    assert cfg.adapter.settings.branches == 2 and cfg.adapter.method == "dmlora"
    assert cfg.schedule.rank_min == 4 and cfg.schedule.rank_max == 32  # derived: granule, 4 x rank


def test_flat_era_yaml_loads_to_the_same_settings(tmp_path):
    old = tmp_path / "train_config.yaml"
    old.write_text(FLAT_ERA)
    cfg = TrainConfig.from_sources(old, {})
    assert cfg.adapter.method == "adaring" and cfg.adapter.settings.ring_rank == 3
    assert cfg.adapter.settings.ring_rank_pattern == {"down_proj": 5}
    assert (cfg.optim.lr, cfg.optim.seed, cfg.optim.max_steps, cfg.optim.batch_size) == (0.003, 3, 40, 4)
    flat = yaml.safe_load(FLAT_ERA)
    now = cfg.to_flat()
    assert {k: v for k, v in flat.items() if k in now} == {k: now[k] for k in flat if k in now}
    # other methods' settings were written with their defaults and are not kept
    assert not {"branches", "rank_parallel"} & set(now)


def test_saved_nested_config_round_trips(tmp_path):
    cfg = TrainConfig.from_flat({**REQUIRED, "adapter": "multihead", "rank": 8, "rank_sequential": 2, "lr": 0.01,
                                 "realloc_window": [0.2, 0.6], "eval_every": 5})
    saved = tmp_path / "train_config.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert set(yaml.safe_load(saved.read_text())) == {"model", "data", "adapter", "schedule", "optim", "output"}
    again = TrainConfig.from_sources(saved, {})
    assert again.to_flat() == cfg.to_flat()
    assert again.adapter.settings.rank_parallel == 6


def test_nested_keys_in_the_wrong_section_or_unknown_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {rank: 8}\n")
    with pytest.raises(UserError, match="in section 'optim'") as err:
        load_yaml(bad)
    assert "belongs in section 'adapter'" in str(err.value) and str(bad) in str(err.value)
    bad.write_text("schedule: {kind: magic}\n")
    with pytest.raises(UserError, match="must be one of fixed, hierarchical, dynamic, hydra"):
        load_yaml(bad)
    bad.write_text("optim: {lr: .nan}\n")
    with pytest.raises(UserError, match="finite"):
        load_yaml(bad)
    bad.write_text("adapter: {method: lora, lora_dropout: 0.1, branches: 3}\n")
    with pytest.raises(UserError, match="a setting of dmlora, but the adapter method is lora"):
        TrainConfig.from_sources(bad, dict(REQUIRED))


def test_flags_override_yaml_and_adaring_refuses_rank(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("optim: {lr: 0.003, batch_size: 4}\nadapter: {method: adaring, ring_rank: 2}\n")
    cfg = TrainConfig.from_sources(run, {**REQUIRED, "lr": 0.001})
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.adapter.settings.ring_rank) == (0.001, 4, 2)
    with pytest.raises(UserError, match="--rank has no effect on adaring"):
        TrainConfig.from_sources(run, {**REQUIRED, "rank": 16})


def test_train_help_shows_every_declared_flag_in_its_panel():
    from typer.testing import CliRunner

    from mobilepeft.export.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output
    for flag in TrainConfig.flags():
        assert f"--{flag.replace('_', '-')}" in out, flag
    for panel in ("Model", "Data", "Adapter", "Rank schedule (HyDRA)", "Optimisation", "Adapter: dmlora"):
        assert f"─ {panel} ─" in out
    assert "One of: adaring, dmlora, lora, multihead." in out
