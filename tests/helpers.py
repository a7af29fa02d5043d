"""Helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

import mobilepeft
from mobilepeft.data.template import build_prompt_ids
from mobilepeft.models.checkpoint import read_state_dict
from mobilepeft.models.config import MobileVLMConfig


def plain_llama(ckpt: Path) -> LlamaForCausalLM:
    """LlamaForCausalLM from the checkpoint's LLM weights only (what a PEFT user would build)."""
    cfg = MobileVLMConfig.from_dir(ckpt).llama_config()
    llm = LlamaForCausalLM(cfg)
    state = {k: v for k, v in read_state_dict(ckpt).items()
             if not k.startswith(("model.vision_tower.", "model.mm_projector."))}
    llm.load_state_dict(state)
    return llm.eval()


def assert_peft_equal(ckpt: Path, peft_dir: Path, ours_adapter: Path | None = None, tol: float = 1e-4) -> None:
    """PEFT LoRA in ``peft_dir`` on a plain LlamaForCausalLM gives the text-only logits of
    ``load_vlm(ckpt, adapter=ours_adapter or peft_dir)``, and the adapter really changes the model."""
    from peft import PeftModel

    ours = mobilepeft.load_vlm(ckpt, adapter=ours_adapter or peft_dir)
    peft_model = PeftModel.from_pretrained(plain_llama(ckpt), str(peft_dir)).eval()
    ids = torch.tensor([build_prompt_ids("What shape is shown? Answer in one word.", ours.tokenizer)])
    with torch.no_grad():
        a = ours(ids).logits
        b = peft_model(input_ids=ids).logits
        base = plain_llama(ckpt)(input_ids=ids).logits
    assert (a - b).abs().max().item() <= tol
    assert (a - base).abs().max().item() > 1e-3, "adapter must actually change the model"
