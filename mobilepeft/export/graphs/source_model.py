"""What every inference exporter starts from: the merged model, its KV-cache length, and a probe.

ExecuTorch and Core ML bundles are exported from the same merged model and checked on the same
probe (a real prompt with an image slot and fixed pixels), so their self-tests measure the same
thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilepeft.errors import UserError
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM


def load_merged(model_dir: str | Path, adapter_dir: str | Path | None, echo: Callable[[str], None]
                ) -> MobileVLMForCausalLM:
    """The model in eval mode with ``adapter_dir`` (any method) merged into its weights."""
    from mobilepeft.adapters.inject import merge_and_unload
    from mobilepeft.loading import load_vlm

    echo("[1/3] loading" + (" and merging the adapter" if adapter_dir else ""))
    model = load_vlm(Path(model_dir), adapter=adapter_dir)
    if adapter_dir is not None:
        merge_and_unload(model)
    return model.eval()


def resolve_max_seq_len(model: MobileVLMForCausalLM, max_seq_len: int | None) -> int:
    """``--max-seq-len`` or the model's positions (at most 2048), checked against both bounds."""
    limit = model.llm.config.max_position_embeddings
    max_seq_len = max_seq_len or min(limit, 2048)
    if not model.config.num_image_tokens < max_seq_len <= limit:
        raise UserError(f"--max-seq-len {max_seq_len} must exceed the {model.config.num_image_tokens} image tokens "
                        f"and not exceed the model's {limit} positions", field="max-seq-len")
    return max_seq_len


@dataclass
class Probe:
    ids: torch.Tensor  # [T] prompt ids with one IMAGE_TOKEN_INDEX slot
    pixels: torch.Tensor  # [1,3,S,S]


def probe_inputs(model: MobileVLMForCausalLM) -> Probe:
    from mobilepeft.data.template import build_prompt_ids

    size = model.config.image_size
    pixels = torch.zeros(1, 3, size, size).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(0))
    return Probe(torch.tensor(build_prompt_ids("<image>\nWhat is in the picture?", model.tokenizer)), pixels)


@torch.no_grad()
def prefill(methods: dict[str, Callable], probe: Probe) -> torch.Tensor:
    """Prefill logits of the probe through one runtime's three methods, spliced as a runner splices."""
    from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX

    slot = int((probe.ids == IMAGE_TOKEN_INDEX).nonzero()[0])
    embed = methods["token_embedding"]
    embeds = torch.cat([embed(probe.ids[None, :slot]), methods["vision_encoder"](probe.pixels),
                        embed(probe.ids[None, slot + 1:])], dim=1)
    return methods["text_decoder"](embeds, torch.arange(embeds.shape[1]))
