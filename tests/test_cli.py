"""The command line as users meet it: bad input gives one clear message and exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "mobilepeft"]  # the same function as the installed script: all commands


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _run_in_process(*args) -> subprocess.CompletedProcess:
    """A happy path through typer's runner: the same app, without paying for a new interpreter's imports."""
    from typer.testing import CliRunner

    from mobilepeft.export.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout,
                                       result.stderr + ("" if result.exception is None else repr(result.exception)))


@pytest.fixture()
def broken_data(synth_data, tmp_path):
    """A copy of 6 good samples plus one whose image file is missing."""
    samples = json.loads((synth_data / "train.json").read_text())[:6]
    bad = dict(samples[0], id="broken-one", image="images/does_not_exist.png")
    data = tmp_path / "train.json"
    data.write_text(json.dumps([*samples, bad]))
    shutil.copytree(synth_data / "images", tmp_path / "images")
    return data


def test_missing_image_is_a_clear_error(tiny_ckpt, broken_data, tmp_path):
    proc = _run("train", "--model", str(tiny_ckpt), "--data", str(broken_data), "--output-dir",
                str(tmp_path / "out"), "--max-steps", "1")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert str(broken_data) in err and "broken-one" in err and "does_not_exist.png" in err and "image" in err
    assert "--skip-bad-samples" in err


def test_skip_bad_samples_continues_and_counts(tiny_ckpt, broken_data, tmp_path):
    proc = _run("train", "--model", str(tiny_ckpt), "--data", str(broken_data), "--output-dir",
                str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2", "--skip-bad-samples")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 bad samples" in proc.stdout
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_unknown_target_module_and_bad_yaml(tiny_ckpt, synth_data, tmp_path):
    proc = _run("train", "--model", str(tiny_ckpt), "--data", str(synth_data / "train.json"), "--output-dir",
                str(tmp_path / "o"), "--target-modules", "q_proj,qkv_proj")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "qkv_proj" in proc.stderr and "target_modules" in proc.stderr
    cfg = tmp_path / "run.yaml"
    cfg.write_text("rank: [unclosed\n")
    proc = _run("train", "--config", str(cfg))
    assert proc.returncode == 2 and "invalid YAML" in proc.stderr and str(cfg) in proc.stderr


def test_init_model_and_synth_commands(tmp_path):
    proc = _run_in_process("init-model", "--preset", "tiny", "--projector", "ldpnet", "--weight-format", "sharded-bin",
                "--output-dir", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["mm_projector_type"] == "ldpnet" and cfg["model_type"] == "mobilevlm"
    assert (tmp_path / "m" / "pytorch_model.bin.index.json").is_file()
    assert (tmp_path / "m" / "tokenizer.model").is_file()
    proc = _run_in_process("data", "synth", "--output-dir", str(tmp_path / "d"), "--n-train", "10", "--n-val", "4")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "d" / "train.json").read_text())) == 10
    proc = _run("init-model", "--preset", "huge", "--output-dir", str(tmp_path / "x"))
    assert proc.returncode == 2 and "unknown preset 'huge'" in proc.stderr


@pytest.mark.parametrize("method", ["multihead", "dmlora", "adaring"])
def test_every_method_trains_from_the_cli(method, tiny_ckpt, synth_data, tmp_path):
    out = tmp_path / method
    proc = _run_in_process("train", "--model", str(tiny_ckpt), "--data", str(synth_data / "train.json"), "--output-dir",
                str(out), "--adapter", method, "--max-steps", "25", "--batch-size", "8", "--lr", "3e-3",
                "--log-every", "1", "--save-every", "0", "--max-length", "256")
    assert proc.returncode == 0, proc.stderr
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 25 and sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    proc = _run_in_process("adapter", "info", str(out / "adapter"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["method"] == method and info["modules"] == 28
    if method == "multihead":  # the deployment commands, as users type them
        proc = _run_in_process("merge", "--model", str(tiny_ckpt), "--adapter", str(out / "adapter"), "--output-dir",
                    str(tmp_path / "merged"))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "merged" / "model.safetensors").is_file()
        proc = _run_in_process("adapter", "to-lora", str(out / "adapter"), "--output-dir", str(tmp_path / "lora"))
        assert proc.returncode == 0, proc.stderr
        lowered = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
        assert lowered["peft_type"] == "LORA" and lowered["r"] % 2 == 0  # default schedule: ranks in granules
        proc = _run("merge", "--model", str(tiny_ckpt), "--adapter", str(tmp_path / "nowhere"), "--output-dir",
                    str(tmp_path / "m2"))
        assert proc.returncode == 2 and "adapter directory not found" in proc.stderr
