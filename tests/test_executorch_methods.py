"""ExecuTorch's MultimodalRunner on merged models of the other adapter methods (multihead, dmlora,
adaring) and on the real-format MobileVLM V2 sharded checkpoint: the same greedy tokens as
``model.generate``. Portable backend: the runner path is the one XNNPACK bundles take
(test_executorch.py), and portable lowering is twice as fast."""

from __future__ import annotations

import pytest
from helpers import assert_runner_generates_like_pytorch, train_adapter

from mobilepeft.export.executorch_export import export_executorch


@pytest.mark.parametrize("method", ["multihead", "dmlora", "adaring", None])
def test_multimodal_runner_on_each_merged_method_and_the_v2_checkpoint(method, tiny_ckpt, v2_sharded_ckpt,
                                                                        synth_data, tmp_path):
    if method is None:
        ckpt, adapter = v2_sharded_ckpt, None
    else:
        # 30 steps at lr 1e-2: enough that every method answers (adaring's shared cores need the higher rate).
        ckpt, adapter = tiny_ckpt, train_adapter(tiny_ckpt, synth_data, tmp_path / "run", method, 30, lr=1e-2)
    export_executorch(ckpt, tmp_path / "bundle", adapter_dir=adapter, backend="portable", max_seq_len=128,
                      echo=lambda _: None)
    answered = assert_runner_generates_like_pytorch(tmp_path / "bundle", ckpt, adapter, synth_data)
    assert answered >= (4 if method else 0)
