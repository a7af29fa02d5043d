"""`mobilepeft train` under torchrun (two gloo processes on CPU) against one process with the same
global batch: DDP and FSDP2 give the same adapter, HyDRA reallocations included, and a run
resumes on a different number of processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from mobilepeft.distributed import Dist, from_environment
from mobilepeft.errors import UserError
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import ResumableBatchSampler, Trainer

# Per process 4 samples, 2 processes: one process needs 2 micro-batches for the same step.
# Probe 2 steps, then a reallocation every 2 steps: events after steps 2 (hierarchical) and 4.
FLAGS = {"batch_size": 4, "global_batch_size": 8, "max_steps": 6, "lr": 3e-3, "max_length": 256,
         "schedule": "hydra", "probe_steps": 2, "realloc_every": 2, "realloc_window": [0.1, 0.9],
         "save_every": 3, "keep_checkpoints": 2, "log_every": 1, "eval_batch_size": 16, "eval_max_new_tokens": 4}
TOL = 1e-5


def _cfg(ckpt, data, out, **kw) -> TrainConfig:
    cfg = TrainConfig.from_flat(dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data), output_dir=str(out),
                      eval_data=str(data / "val16.json"), **{**FLAGS, **kw}))
    cfg.validate()
    return cfg


def _torchrun(ckpt, data, out, *extra: str) -> subprocess.CompletedProcess:
    flags = []
    for key, value in FLAGS.items():
        flags += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mobilepeft",
           "train", "--model", str(ckpt), "--data", str(data / "train.json"), "--eval-data", str(data / "val16.json"),
           "--output-dir", str(out), *flags, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _adapter(run) -> dict:
    return {**load_file(str(run / "adapter" / "adapter_model.safetensors")),
            **load_file(str(run / "adapter" / "mm_projector.safetensors"))}


def _assert_same_run(run, ref) -> None:
    ours, theirs = _adapter(run), _adapter(ref)
    assert ours.keys() == theirs.keys()
    diff = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    print(f"{run.name}: max |adapter - one process| = {diff:.2e}")
    assert diff < TOL
    events = [e["ranks"] for e in json.loads((run / "rank_history.json").read_text())["events"]]
    assert events == [e["ranks"] for e in json.loads((ref / "rank_history.json").read_text())["events"]]
    # the loss curve, and the evaluations before and after (greedy decoding through FSDP too)
    for key in ("loss", "eval_loss", "eval_accuracy"):
        ours, theirs = ([r[key] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if key in r]
                        for d in (run, ref))
        assert ours and max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < TOL, key


@pytest.fixture(scope="module")
def data(synth_data, tmp_path_factory):
    """64 training samples, 3 in 4 of them text-only, so some micro-batches have no image at all
    and leave the projector without a gradient on their rank (DDP's unused parameters, FSDP's
    averaging); a 16-question validation file (evaluation runs on every rank)."""
    out = tmp_path_factory.mktemp("dist-data")
    (out / "images").symlink_to(synth_data / "images")
    train = json.loads((synth_data / "train.json").read_text())[:64]
    for i, sample in enumerate(train):
        if i % 4:
            del sample["image"]
            sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace("<image>\n", "")
    (out / "train.json").write_text(json.dumps(train))
    (out / "val16.json").write_text(json.dumps(json.loads((synth_data / "val.json").read_text())[:16]))
    return out


@pytest.fixture(scope="module")
def one_process(tiny_ckpt, data, tmp_path_factory):
    """The reference: one process, 2 micro-batches of 4 per step (dropout 0.05 on)."""
    micro_batches = list(ResumableBatchSampler(64, 4, seed=0, start=0, total=12))
    assert any(all(i % 4 for i in batch) for batch in micro_batches)  # a micro-batch without images
    out = tmp_path_factory.mktemp("one") / "run"
    Trainer(_cfg(tiny_ckpt, data, out), progress=False).run()
    history = json.loads((out / "rank_history.json").read_text())["events"]
    assert [(e["step"], e["kind"]) for e in history] == [(0, "initial"), (2, "hierarchical"), (4, "dynamic")]
    assert sum(len(e["moves"]) for e in history) >= 1 and history[-1]["ranks"] != history[0]["ranks"]
    return out


def test_sampler_splits_each_step_over_ranks_as_one_process_takes_it():
    one = list(ResumableBatchSampler(50, 4, seed=3, start=8, total=40))  # 4 micro-batches per step, 2 epochs
    for world in (2, 4):
        ranks = [list(ResumableBatchSampler(50, 4, seed=3, start=8, total=40, rank=r, world=world))
                 for r in range(world)]
        assert [ranks[k % world][k // world] for k in range(32)] == one


def test_ddp_equals_one_process_and_resumes_on_one(one_process, tiny_ckpt, data, tmp_path):
    run = tmp_path / "ddp"
    proc = _torchrun(tiny_ckpt, data, run)
    assert "torchrun: 2 processes, DDP on cpu; global batch 8 = 2 x 1 micro-batches x 4" in proc.stderr
    assert proc.stdout.count("trained 6 steps") == 1  # rank 0 reports, rank 1 stays quiet
    _assert_same_run(run, one_process)

    # The checkpoint of step 3 (2 processes) continued by one process, through the reallocation
    # after step 4: the same run.
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    shutil.rmtree(run / "adapter")
    with pytest.raises(UserError, match="global batch 8.*1 process.*take 1") as err:
        Trainer(_cfg(tiny_ckpt, data, run, resume=True, global_batch_size=None), progress=False).run()
    assert "--global-batch-size 8" in err.value.hint
    Trainer(_cfg(tiny_ckpt, data, run, resume=True), progress=False).run()
    _assert_same_run(run, one_process)


def test_fsdp_equals_one_process(one_process, tiny_ckpt, data, tmp_path):
    run = tmp_path / "fsdp"
    proc = _torchrun(tiny_ckpt, data, run, "--fsdp")
    line = next(s for s in proc.stderr.splitlines() if s.startswith("torchrun:"))
    held, total = (float(v) for v in line.split("FSDP2, ")[1].split(" parameters")[0].replace("M", "").split(
        " of the model's "))
    assert held < 0.6 * total  # the frozen base is sharded over the 2 processes
    _assert_same_run(run, one_process)


def test_world_size_settings_are_checked(tiny_ckpt, data, tmp_path):
    cfg = _cfg(tiny_ckpt, data, tmp_path, global_batch_size=24, batch_size=4)
    assert [cfg.micro_batches_per_step(w) for w in (1, 2, 3, 6)] == [6, 6, 6, 6]
    with pytest.raises(UserError, match="global batch 24 .* does not split over 4 processes") as err:
        cfg.micro_batches_per_step(4)
    assert err.value.field == "global_batch_size"
    assert _cfg(tiny_ckpt, data, tmp_path, global_batch_size=None, grad_accum=3).micro_batches_per_step(2) == 6
    for bad, message in [({"global_batch_size": 10}, "multiple of --batch-size 4"),
                         ({"grad_accum": 2}, "do not pass --grad-accum too"),
                         ({"stage": "full", "schedule": "fixed", "fsdp": True}, "--stage full trains all of it")]:
        with pytest.raises(UserError, match=message):
            _cfg(tiny_ckpt, data, tmp_path, **bad)


def test_only_torchrun_makes_a_run_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "4")  # a user's own variable, e.g. a LoRA rank in a shell script
    assert from_environment() == Dist()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="RANK=4 is not in a WORLD_SIZE=2 world"):
        from_environment()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == Dist(rank=1, world=2, local_rank=1)
