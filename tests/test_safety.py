"""No command destroys a user's files, resume never runs code, the NaN guard keeps a good checkpoint."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch

import mobilepeft.export.cli  # noqa: F401  (registers the deployment commands)
from mobilepeft.cli import run
from mobilepeft.outputs import MARKER


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mobilepeft.data.synth import write_synthetic_dataset
    from mobilepeft.presets import write_preset

    root = tmp_path_factory.mktemp("safety")
    write_preset("tiny", root / "ckpt")
    write_synthetic_dataset(root / "data", n_train=8, n_val=2)
    return root


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = run([str(a) for a in args])
    return code, capsys.readouterr().err


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _train(world, out, *extra):
    return ["train", "--model", world / "ckpt", "--data", world / "data/train.json", "--output-dir", out,
            "--batch-size", 2, "--max-steps", 2, "--schedule", "fixed", *extra]


def test_output_directory_cases(world, capsys, tmp_path):
    """Every command that writes a directory refuses its own input, a parent of it, a foreign
    folder, another kind of output, a file; nothing on disk changes."""
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    ckpt, data = world / "ckpt", world / "data"
    commands = {
        "merge": lambda out: ["merge", "--model", ckpt, "--adapter", ckpt, "--output-dir", out],
        "init-model": lambda out: ["init-model", "--output-dir", out],
        "data synth": lambda out: ["data", "synth", "--output-dir", out],
        "export executorch": lambda out: ["export", "executorch", "--model", ckpt, "--output-dir", out],
        "export coreml": lambda out: ["export", "coreml", "--model", ckpt, "--output-dir", out],
        "export onnx-training": lambda out: ["export", "onnx-training", "--model", ckpt, "--adapter", ckpt,
                                             "--output-dir", out],
        "train": lambda out: _train(world, out),
        "adapter to-lora": lambda out: ["adapter", "to-lora", ckpt, "--output-dir", out],
        "personalize": lambda out: ["personalize", "--bundle", ckpt, "--data", data / "train.json", "--output-dir", out],
    }
    targets = {"input itself": ckpt, "parent of the input": world, "foreign folder": foreign, "a file": a_file,
               "another kind (dataset)": data}
    before = tree(tmp_path), tree(world)
    tried = 0
    for name, command in commands.items():
        for label, out in targets.items():
            if name in ("init-model", "data synth") and label.startswith(("input", "parent")):
                continue  # no inputs
            if name == "data synth" and label.startswith("another"):
                continue  # that dataset is its own kind: covered by the --overwrite test
            code, err = cli(capsys, *command(out))
            tried += 1
            assert code == 2 and "Traceback" not in err and str(out.name) in err, (name, label, err)
    assert (tree(tmp_path), tree(world)) == before
    assert tried >= 35


def test_previous_output_needs_overwrite_and_stale_temporaries_go(world, capsys, tmp_path):
    out = tmp_path / "ds"
    assert cli(capsys, "data", "synth", "--output-dir", out, "--n-train", 2, "--n-val", 1)[0] == 0
    kept = tree(out)
    code, err = cli(capsys, "data", "synth", "--output-dir", out, "--n-train", 3)
    assert code == 2 and "--overwrite" in err and tree(out) == kept
    stale = tmp_path / f".ds.{2**22 + 12345}-abc123.tmp"  # a pid no process has
    stale.mkdir()
    (stale / "half.png").write_bytes(b"x")
    code, err = cli(capsys, "data", "synth", "--output-dir", out, "--n-train", 3, "--overwrite")
    assert code == 0 and not stale.exists() and "interrupted" in err
    assert len(list((out / "images").iterdir())) == 3 + 160 and (out / MARKER).is_file()


def test_train_into_previous_run_refused_then_overwritten(world, capsys, tmp_path):
    out = tmp_path / "run"
    assert cli(capsys, *_train(world, out, "--schedule", "hydra", "--probe-steps", "1"))[0] == 0
    assert (out / "rank_history.json").is_file()
    kept = tree(out)
    code, err = cli(capsys, *_train(world, out))
    assert code == 2 and "--resume" in err and tree(out) == kept
    assert cli(capsys, *_train(world, out, "--overwrite"))[0] == 0
    assert not (out / "rank_history.json").exists()  # a fixed-schedule run has no rank history


class Payload:
    """Unpickling this runs a shell command: what a tampered checkpoint file would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_payload_in_each_checkpoint_file_is_refused_not_run(world, capsys, tmp_path):
    out = tmp_path / "run"
    assert cli(capsys, *_train(world, out, "--schedule", "hydra", "--probe-steps", "1", "--save-every", "1",
                               "--max-steps", "3"))[0] == 0
    ckpt = sorted((out / "checkpoints").glob("step-*"))[-1]
    loadable = sorted(p.name for p in ckpt.iterdir())
    assert loadable == ["optimizer.pt", "rank_schedule.pt", "trainable.safetensors", "trainer_state.json"]
    marker = tmp_path / "PWNED"
    for name in loadable:
        original = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(pickle.dumps({"state": Payload(marker)}))
        code, err = cli(capsys, *_train(world, out, "--schedule", "hydra", "--probe-steps", "1", "--save-every", "1",
                                        "--max-steps", "3", "--resume"))
        (ckpt / name).write_bytes(original)
        assert code == 2 and name in err and "Traceback" not in err, (name, err)
        assert not marker.exists(), f"{name}: the payload ran"


def test_nan_guard_never_writes_or_names_a_non_finite_checkpoint(world, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = cli(capsys, *_train(world, out, "--lr", "1e6", "--warmup-ratio", "0", "--save-every", "1",
                                    "--max-steps", "8"))
    assert code == 2 and "lower learning rate" in err and "--overwrite" in err
    from safetensors.torch import load_file

    for ckpt in (out / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "trainable.safetensors")).values()), ckpt
    assert not (out / "adapter").exists()
    code, err = cli(capsys, *_train(world, tmp_path / "nan", "--lr", "nan"))
    assert code == 2 and "'lr'" in err and not (tmp_path / "nan").exists()
