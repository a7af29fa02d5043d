"""How much memory a personalization session needs, estimated from the bundle before anything loads,
so a phone without enough gets a clear refusal instead of being killed mid-step
(docs/on-device-training.md, "Memory").

A session has two phases (:class:`~mobilepeft.export.ort.personalize.BatchBuilder`): the frozen graphs
one at a time (vision encoder; a split bundle's decoder prefix), then the training session. Each
phase's resident size was measured against the bytes it loads at MobileVLM-1.7B's shape
(``benchmarks/personalize_1p7b.py``, docs/results/personalize_1p7b.json, without the interpreter's
own share): the training phase about 2.2x the checkpoint, the frozen graphs about 1.0x the larger graph. The
factors below round those up, and the logits of a step are added (they grow with the batch).
"""

from __future__ import annotations

from typing import Any

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle

TRAINING_FACTOR = 2.4  # resident training session / checkpoint bytes (measured ~2.2 at the 1.7B shape)
FROZEN_FACTOR = 1.2  # resident frozen-graph session / its file bytes (measured ~1.0)
LOGIT_COPIES = 4  # logits, their softmax, its gradient and the flattened view ORT's loss takes
MIB = 2**20


def _bytes(bundle: Bundle, *names: str | None) -> int:
    files = bundle.manifest["files"]
    return sum(files[n]["bytes"] for n in names if n and n in files)


def session_estimate_mib(bundle: Bundle, batch_size: int) -> dict[str, float]:
    """Estimated peak resident MiB of each phase of a personalization session with ``batch_size``."""
    sec = bundle.section("onnx_training")
    frozen = [_bytes(bundle, sec["vision_encoder"]["file"])]
    if split := sec.get("split"):
        frozen.append(_bytes(bundle, split["file"], split["data_file"]))
    model = bundle.manifest["model"]
    logits = batch_size * bundle.manifest["max_seq_len"] * model["vocab_size"] * 4 * LOGIT_COPIES
    training = TRAINING_FACTOR * _bytes(bundle, sec["checkpoint"], sec["checkpoint"] + ".data") + logits
    return {"frozen_graphs": FROZEN_FACTOR * max(frozen) / MIB, "training": training / MIB}


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
