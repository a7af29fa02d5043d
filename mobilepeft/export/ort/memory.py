"""How much memory a personalization session needs, estimated when the bundle is exported and recorded
in its manifest (``onnx_training.memory_estimate_mib``), so a phone without enough gets a clear
refusal before anything loads instead of being killed mid-step (docs/on-device-training.md, "Memory").
The phones' cores read the recorded figures; this module is the only place that computes them.

A session has two phases (:class:`~mobilepeft.export.ort.personalize.BatchBuilder`): the frozen graphs
one at a time (vision encoder; a split bundle's decoder prefix), then the training session. Each
phase's resident size was measured against the bytes it loads at MobileVLM-1.7B's shape
(``benchmarks/personalize_1p7b.py``, docs/results/personalize_1p7b.json, without the interpreter's
own share): the training phase about 2.2x the checkpoint, the frozen graphs about 1.0x the larger graph. The
factors below round those up; the logits of a step are recorded per batch row (they grow with the batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle

TRAINING_FACTOR = 2.4  # resident training session / checkpoint bytes (measured ~2.2 at the 1.7B shape)
FROZEN_FACTOR = 1.2  # resident frozen-graph session / its file bytes (measured ~1.0)
LOGIT_COPIES = 4  # logits, their softmax, its gradient and the flattened view ORT's loss takes
MIB = 2**20


def recorded_estimate(bundle_dir: Path, section: dict[str, Any], seq_len: int, vocab_size: int) -> dict[str, float]:
    """The manifest's ``memory_estimate_mib`` for the bundle written in ``bundle_dir``: the frozen graphs'
    phase, the training phase without the logits, and the logits per batch row."""
    def size(*names: str | None) -> int:
        return sum((bundle_dir / n).stat().st_size for n in names if n and (bundle_dir / n).is_file())

    frozen = [size(section["vision_encoder"]["file"])]
    if split := section.get("split"):
        frozen.append(size(split["file"], split["data_file"]))
    return {"frozen_graphs": round(FROZEN_FACTOR * max(frozen) / MIB, 1),
            "training": round(TRAINING_FACTOR * size(section["checkpoint"], section["checkpoint"] + ".data") / MIB, 1),
            "training_per_batch_row": round(seq_len * vocab_size * 4 * LOGIT_COPIES / MIB, 3)}


def session_estimate_mib(bundle: Bundle, batch_size: int) -> dict[str, float]:
    """Estimated peak resident MiB of each phase of a personalization session with ``batch_size``."""
    recorded = bundle.section("onnx_training")["memory_estimate_mib"]
    return {"frozen_graphs": recorded["frozen_graphs"],
            "training": recorded["training"] + batch_size * recorded["training_per_batch_row"]}


def check_memory(bundle: Bundle, batch_size: int, limit_mib: float | None) -> dict[str, Any]:
    """The estimate; refused (before anything loads) when a phase would not fit ``limit_mib``."""
    estimate = session_estimate_mib(bundle, batch_size)
    need = max(estimate.values())
    if limit_mib is not None and need > limit_mib:
        phase = max(estimate, key=estimate.get)
        split = bundle.section("onnx_training").get("split")
        hint = ("lower --batch-size, or export with a smaller --train-layers" if phase == "training"
                else "export the frozen layers with --prefix-weights int8 or train more layers")
        if phase == "training" and not split:
            hint = "export with --train-layers K (only the top K layers in the training graph), or lower --batch-size"
        raise UserError(f"personalizing this bundle needs about {need:.0f} MiB ({phase.replace('_', ' ')}, batch "
                        f"{batch_size}); the limit is {limit_mib:.0f} MiB", path=bundle.path, hint=hint)
    return estimate
