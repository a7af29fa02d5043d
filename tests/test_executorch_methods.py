"""ExecuTorch's MultimodalRunner on merged models of the other adapter methods (multihead, dmlora,
adaring) and on the real-format MobileVLM V2 sharded checkpoint: the same greedy tokens as
``model.generate``. Portable backend: the runner path is the one XNNPACK bundles take
(test_executorch.py), and portable lowering is twice as fast. The V2 case goes through the CLI
(`export executorch`, `generate`) as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import assert_runner_generates_like_pytorch, train_adapter, val_questions

from mobilepeft.export.executorch.exporter import export_executorch
from mobilepeft.export.executorch.runner import BundleRunner


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilepeft.export.cli", *map(str, args)], capture_output=True,
                          text=True, check=False)


@pytest.mark.parametrize("method", ["multihead", "dmlora", "adaring", None])
def test_multimodal_runner_on_each_merged_method_and_the_v2_checkpoint(method, tiny_ckpt, v2_sharded_ckpt,
                                                                        synth_data, tmp_path):
    bundle = tmp_path / "bundle"
    if method is None:
        from typer.testing import CliRunner

        from mobilepeft.export.cli import app

        # The export as users type it, through typer's runner (a new interpreter only costs imports).
        ckpt, adapter = v2_sharded_ckpt, None
        done = CliRunner().invoke(app, ["export", "executorch", "--model", str(ckpt), "--output-dir", str(bundle),
                                        "--backend", "portable", "--max-seq-len", "128"])
        assert done.exit_code == 0, done.output + repr(done.exception)
        assert "text_decoder: " in done.stdout and "left to portable kernels" in done.stdout
    else:
        # 30 steps at lr 1e-2: enough that every method answers (adaring's shared cores need the higher rate).
        ckpt, adapter = tiny_ckpt, train_adapter(tiny_ckpt, synth_data, tmp_path / "run", method, 30, lr=1e-2)
        export_executorch(ckpt, bundle, adapter_dir=adapter, backend="portable", max_seq_len=128,
                          echo=lambda _: None)
    answered = assert_runner_generates_like_pytorch(bundle, ckpt, adapter, synth_data)
    assert answered >= (4 if method else 0)
    if method is None:
        question, image = val_questions(synth_data, 1)[0]
        done = _cli("generate", "--bundle", bundle, "--image", image, "--prompt", question, "--max-new-tokens", 8)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == BundleRunner(bundle).generate(question, image, max_new_tokens=8).text
        assert "Metadata" not in done.stdout + done.stderr  # ExecuTorch's own log stays out of the output
        bad = _cli("export", "executorch", "--model", ckpt, "--output-dir", tmp_path / "x", "--quantize", "int3")
        assert bad.returncode == 2 and "quantize" in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "x").exists()
