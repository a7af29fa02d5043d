"""Shared fixtures: tiny MobileVLM checkpoints in the real on-disk formats and a synthetic dataset.

Everything is generated locally (no downloads). Session-scoped: the suite builds each artefact once.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from mobilepeft.data.synth import write_synthetic_dataset  # noqa: E402
from mobilepeft.models.checkpoint import read_state_dict, save_checkpoint  # noqa: E402
from mobilepeft.models.config import MobileVLMConfig  # noqa: E402
from mobilepeft.presets import write_preset  # noqa: E402

# Bundle verification stamps (mobilepeft/export/bundle.py) go to a throwaway cache, not the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mobilepeft-test-cache-")

# Under pytest-xdist (`make test` runs two workers on two cores) each worker gets one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def perturbed_copy(src: Path, dst: Path, *, weight_format: str, seed: int = 0, max_shard_bytes: int = 2**31) -> Path:
    """Re-save ``src`` with every tensor (LayerNorm weights, biases, ...) randomly perturbed, so that
    parity tests cannot pass on the symmetric values of a fresh initialisation."""
    g = torch.Generator().manual_seed(seed)
    state = read_state_dict(src)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    return save_checkpoint(noisy, MobileVLMConfig.from_dir(src), dst, tokenizer_dir=src,
                           weight_format=weight_format, max_shard_bytes=max_shard_bytes)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The embedded default: tiny MobileVLM V2, single model.safetensors."""
    return write_preset("tiny", tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def v1_bin_ckpt(tmp_path_factory) -> Path:
    """MobileVLM V1 (ldpnet) layout, single pytorch_model.bin, all tensors perturbed."""
    base = write_preset("tiny", tmp_path_factory.mktemp("v1src") / "model", projector_type="ldpnet", seed=1)
    return perturbed_copy(base, tmp_path_factory.mktemp("v1") / "model", weight_format="bin", seed=1)


@pytest.fixture(scope="session")
def v2_sharded_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    """MobileVLM V2 (ldpnetv2) layout, sharded safetensors + index, all tensors perturbed."""
    return perturbed_copy(tiny_ckpt, tmp_path_factory.mktemp("v2") / "model", weight_format="sharded",
                          seed=2, max_shard_bytes=1_500_000)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, n_train=800, n_val=96, seed=0)
    return out


# Longest files first: pytest-xdist hands whole files to the two workers in collection order, so
# a long file collected last would run alone at the end (measured: the suite's wall time varied
# 549-614 s with the alphabetical order).
LONGEST_FIRST = ("test_executorch.py", "test_adapter_as_data_methods.py", "test_adapter_as_data.py", "test_executorch_methods.py", "test_coreml.py", "test_cli.py", "test_quality_benchmark.py",
                 "test_training.py", "test_onnx_training.py", "test_android_core.py", "test_schedule.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
