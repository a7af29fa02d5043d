"""The compared methods as ``mobilepeft train`` settings, and the equal-budget rule.

Every LoRA-family method gets the trainable-parameter budget of plain LoRA at rank ``r0`` on the
same modules: LoRA, the HyDRA schedules (which keep that budget by construction, docs/hydra.md),
Hydra multi-head (parallel + sequential branches sharing r0) and DMLoRA (branches sharing r0)
hit it exactly; AdaRing's budget is set by its ring ranks, so they are chosen per module type to
come closest to it. Full fine-tuning trains every LLM weight. All of them train the projector,
as MobileVLM's fine-tuning recipes do.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from mobilepeft.adapters.summary import summarize_spec
from mobilepeft.adapters.targets import LLM_LINEARS
from mobilepeft.train.config import TrainConfig

#: name -> (label in the table, TrainConfig overrides)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("Full fine-tuning", {"stage": "full"}),
    "lora": ("LoRA (fixed rank)", {"adapter": "lora", "schedule": "fixed"}),
    "hydra": ("HyDRA (--schedule hydra)", {"adapter": "lora", "schedule": "hydra"}),
    "hierarchical": ("HyDRA: hierarchical only", {"adapter": "lora", "schedule": "hierarchical"}),
    "dynamic": ("HyDRA: dynamic only", {"adapter": "lora", "schedule": "dynamic"}),
    "hydra_rank": ("HyDRA: sensitivity per rank unit", {"adapter": "lora", "schedule": "hydra", "allocation": "rank"}),
    "hydra_veto": ("HyDRA: moves vetoed within noise", {"adapter": "lora", "schedule": "hydra", "veto": 1.0}),
    "hydra_late": ("HyDRA: moves from 25% of the run", {"adapter": "lora", "schedule": "hydra",
                                                         "realloc_window": [0.25, 0.7]}),
    "hydra_moments": ("HyDRA: per-feature Adam moments on resize", {"adapter": "lora", "schedule": "hydra",
                                                                   "resize_moments": "axis"}),
    "hierarchical_blocks": ("HyDRA: hierarchical, every block keeps its budget",
                            {"adapter": "lora", "schedule": "hierarchical", "block_temperature": 0.0}),
    "hydra_blocks": ("HyDRA: every block keeps its budget", {"adapter": "lora", "schedule": "hydra",
                                                            "block_temperature": 0.0}),
    "hydra_block_moves": ("HyDRA: every block keeps its budget, moves inside a block",
                          {"adapter": "lora", "schedule": "hydra", "block_temperature": 0.0, "move_scope": "block"}),
    "hydra_linear_trend": ("HyDRA: moves observed against a linear loss trend",
                           {"adapter": "lora", "schedule": "hydra", "loss_trend": "linear"}),
    "lora_hydra_lr": ("LoRA at HyDRA's chosen learning rate", {"adapter": "lora", "schedule": "fixed"}),
    "hydra_lora_lr": ("HyDRA at LoRA's chosen learning rate", {"adapter": "lora", "schedule": "hydra"}),
    "multihead": ("Hydra multi-head", {"adapter": "multihead", "schedule": "fixed"}),
    "dmlora": ("DMLoRA", {"adapter": "dmlora", "schedule": "fixed"}),
    "adaring": ("AdaRing", {"adapter": "adaring", "schedule": "fixed"}),
}

#: HyDRA's options (docs/hydra.md), ablated beside it with ``--methods``, and LoRA at HyDRA's settings (is a
#: difference the schedule's or the learning rate's?); the published table (:data:`TABLE`) compares the
#: methods without them
VARIANTS = ("hydra_rank", "hydra_veto", "hydra_late", "hydra_moments", "hierarchical_blocks", "hydra_blocks",
            "hydra_block_moves", "hydra_linear_trend", "lora_hydra_lr", "hydra_lora_lr")
TABLE = tuple(m for m in METHODS if m not in VARIANTS)
#: ``--quick``: the headline comparison (LoRA, HyDRA, and HyDRA's better half) within an hour on 2 cores
QUICK = ("lora", "hydra", "hierarchical")

#: each method's main knob besides the learning rate and the adapter scale, searched on the validation split after
#: the rate: name -> (TrainConfig key, values, the first the default)
KNOBS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "hydra": ("temperature", (0.5, 0.25, 1.0)),
    "dmlora": ("branch_drop_max", (0.5, 0.25, 0.1)),
}
#: The adapter scale s multiplies every method's update: alpha / r for LoRA and HyDRA (DMLoRA's learning scalar starts
#: there), alpha / (r_p + r_s) for Hydra multi-head (what its source tunes per task, 0.1 to 4.5 on VTAB-1k), alpha / R^2
#: for AdaRing (its source states none). Every method is searched over the same values of s, so a method is not
#: credited with a gain the protocol would give LoRA too; the values are reached through alpha (``alpha_factor``
#: times the default 2 x rank).
SCALED = ("lora", "hydra", "dmlora", "multihead", "adaring")
SCALE_GRID = (1.0, 2.0, 4.0, 8.0)
#: where the best scale is the highest (lowest) tried, the next doubling (halving) is tried, within these bounds
SCALE_RANGE = (0.125, 32.0)
#: ablations take the searched settings of the method they ablate, so they isolate its parts
SEARCH_AS: dict[str, str] = {m: "hydra" for m in ("hierarchical", "dynamic", *VARIANTS)} | {"hydra_lora_lr": "lora"}


def default_scale(method: str, rank: int, ring_rank_pattern: dict[str, int]) -> float:
    """A method's scale s at the default alpha 2 x rank: 2 for the methods scaled by their rank; AdaRing's
    2 x rank / R^2 at its median ring rank R (0.25 at the benchmark's rank 8 and R = 8)."""
    if method == "adaring":
        ring = statistics.median(ring_rank_pattern.values())
        return 2.0 * rank / ring**2
    return 2.0


def adapter_budget(model_dir: Path, overrides: dict[str, Any], rank: int) -> int:
    """Adapter parameters of a method at the start of training (schedules keep this number)."""
    cfg = TrainConfig.from_flat(dict(model=str(model_dir), data="x", output_dir="x", rank=rank, **overrides))
    cfg.validate()
    return summarize_spec(cfg.adapter, model_dir).trainable_parameters


def match_ring_ranks(model_dir: Path, rank: int) -> tuple[dict[str, int], int, int]:
    """AdaRing ring ranks per module type whose budget is closest to LoRA at ``rank``.

    A group of L same-shaped modules costs R^2 (in + out + L) against LoRA's L r (in + out), so R
    is near sqrt(L r); start every type at the floor and raise types one at a time while that
    brings the total closer. Returns (pattern, AdaRing parameters, LoRA parameters).
    """
    target = adapter_budget(model_dir, {"adapter": "lora", "schedule": "fixed"}, rank)

    def cost(pattern: dict[str, int]) -> int:
        return adapter_budget(model_dir, {"adapter": "adaring", "ring_rank_pattern": pattern}, rank)

    from mobilepeft.models.config import MobileVLMConfig

    layers = MobileVLMConfig.from_dir(model_dir).raw["num_hidden_layers"]
    low = max(1, math.isqrt(layers * rank))
    pattern = {t: low for t in LLM_LINEARS}
    best = cost(pattern)
    for module_type in reversed(LLM_LINEARS):  # down/up/gate (the widest groups) first
        trial = {**pattern, module_type: low + 1}
        c = cost(trial)
        if abs(c - target) < abs(best - target):
            pattern, best = trial, c
    return pattern, best, target


def train_config(method: str, *, model: Path, data: Path, image_folder: Path, output_dir: Path, seed: int,
                 steps: int, rank: int, lr: float, batch_size: int, ring_rank_pattern: dict[str, int],
                 temperature: float = 0.5, knobs: dict[str, Any] | None = None) -> TrainConfig:
    """``mobilepeft train``'s settings for one run; ``knobs`` override the method's defaults
    (``alpha_factor`` scales the default alpha 2 x rank). No dropout on the adapters' inputs, for every method: at this model's size
    drawing the masks is a quarter of a step's time, and the runs are short enough not to need it."""
    _, overrides = METHODS[method]
    extra: dict[str, Any] = {"ring_rank_pattern": ring_rank_pattern} if method == "adaring" else {}
    extra.update({"temperature": temperature})
    extra.update(knobs or {})
    alpha = 2.0 * rank * extra.pop("alpha_factor", 1.0)
    cfg = TrainConfig.from_flat(dict(model=str(model), data=str(data), image_folder=str(image_folder), output_dir=str(output_dir),
                      seed=seed, max_steps=steps, rank=rank, alpha=alpha, lora_dropout=0.0, batch_size=batch_size,
                      lr=lr, warmup_ratio=0.05, max_length=256, save_every=0,
                      log_every=10, **overrides, **extra))
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Print each method's adapter budget on a checkpoint (and AdaRing's matching ring ranks)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", type=Path, required=True, help="MobileVLM checkpoint directory")
    parser.add_argument("--rank", type=int, default=8, help="the budget: LoRA at this rank on every LLM linear")
    parser.add_argument("--ring-pattern", action="store_true",
                        help="print only AdaRing's ring ranks as NAME=R,... (for --ring-rank-pattern)")
    parser.add_argument("--table", type=Path, help="also write the budget table to this file")
    args = parser.parse_args(argv)
    pattern, ring, lora = match_ring_ranks(args.model, args.rank)
    lines = [f"budget: LoRA rank {args.rank} on {', '.join(LLM_LINEARS)} = {lora:,} adapter parameters"]
    for name, (label, overrides) in METHODS.items():
        if name == "full":
            continue
        extra = {"ring_rank_pattern": pattern} if name == "adaring" else {}
        n = adapter_budget(args.model, {**overrides, **extra}, args.rank)
        lines.append(f"  {label:<28} {n:>14,}  ({n / lora - 1:+.2%})")
    if args.table is not None:
        from mobilepeft.io import write_text

        write_text(args.table, "\n".join(lines) + "\n")
    print(",".join(f"{k}={v}" for k, v in pattern.items()) if args.ring_pattern else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
