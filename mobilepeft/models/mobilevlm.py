"""MobileVLM: CLIP vision tower + LDP projector + LLaMA decoder.

The LLaMA part is a stock transformers ``LlamaForCausalLM`` held as ``self.llm``, so module
paths inside it (``model.layers.0.self_attn.q_proj``) are exactly the paths PEFT uses for a
causal LM; that is what makes our adapter files loadable by ``peft`` unchanged. Checkpoint keys
are mapped by :func:`to_checkpoint_key` / :func:`from_checkpoint_key`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaForCausalLM

from mobilepeft.models.config import MobileVLMConfig
from mobilepeft.models.image_processing import preprocess_images
from mobilepeft.models.projector import build_projector
from mobilepeft.models.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Tokenizer
from mobilepeft.models.vision import CLIPVisionTower

_CKPT_PREFIXES = (("vision_tower.", "model.vision_tower."), ("mm_projector.", "model.mm_projector."))


def to_checkpoint_key(name: str) -> str:
    """Internal parameter name -> MobileVLM checkpoint key."""
    for internal, ckpt in _CKPT_PREFIXES:
        if name.startswith(internal):
            return ckpt + name[len(internal) :]
    if name.startswith("llm."):
        return name[len("llm.") :]
    raise KeyError(name)


def from_checkpoint_key(key: str) -> str:
    """MobileVLM checkpoint key -> internal parameter name."""
    for internal, ckpt in _CKPT_PREFIXES:
        if key.startswith(ckpt):
            return internal + key[len(ckpt) :]
    return "llm." + key


@dataclass
class VLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    past_key_values: DynamicCache | None = None


@dataclass
class _Spliced:
    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


class MobileVLMForCausalLM(nn.Module):
    def __init__(self, config: MobileVLMConfig) -> None:
        super().__init__()
        self.config = config
        self.llm = LlamaForCausalLM(config.llama_config())
        self.vision_tower = CLIPVisionTower(config.clip_vision_config(), config.select_layer)
        self.mm_projector = build_projector(config.projector_type, config.mm_hidden_size, config.hidden_size)
        self.tokenizer: Tokenizer | None = None

    # --- inputs --------------------------------------------------------------------------
    def preprocess_images(self, images: list) -> torch.Tensor:
        """PIL images -> normalised ``pixel_values`` [N,3,S,S] (MobileVLM "pad" mode)."""
        return preprocess_images(images, self.config.image_size)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N,3,S,S] -> projected image tokens [N, P, hidden]."""
        tower_trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trainable):
            feats = self.vision_tower(pixel_values)
        proj_dtype = next(self.mm_projector.parameters()).dtype
        return self.mm_projector(feats.to(proj_dtype))

    def _splice(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        left_pad: bool,
    ) -> _Spliced:
        """Replace every -200 slot by its image's tokens and re-pad the batch.

        Images are consumed in order of appearance across the batch (LLaVA convention).
        """
        embed = self.llm.get_input_embeddings()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        n_slots = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if n_slots == 0:
            embeds = embed(input_ids)
            return _Spliced(embeds, attention_mask, _positions(attention_mask), labels)
        if pixel_values is None or pixel_values.shape[0] != n_slots:
            got = 0 if pixel_values is None else pixel_values.shape[0]
            raise ValueError(f"input_ids have {n_slots} image slots (-200) but {got} images were given")
        image_tokens = self.encode_images(pixel_values)
        next_image = 0
        seq_embeds, seq_labels = [], []
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            lab = labels[b][keep] if labels is not None else None
            slots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            bounds = [-1, *slots, ids.shape[0]]
            parts_e, parts_l = [], []
            for i in range(len(bounds) - 1):
                lo, hi = bounds[i] + 1, bounds[i + 1]
                if hi > lo:
                    parts_e.append(embed(ids[lo:hi]))
                    if lab is not None:
                        parts_l.append(lab[lo:hi])
                if i < len(slots):
                    img = image_tokens[next_image]
                    next_image += 1
                    parts_e.append(img.to(parts_e[0].dtype if parts_e else img.dtype))
                    if lab is not None:
                        parts_l.append(torch.full((img.shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device))
            seq_embeds.append(torch.cat(parts_e))
            if lab is not None:
                seq_labels.append(torch.cat(parts_l))
        max_len = max(e.shape[0] for e in seq_embeds)
        hidden = seq_embeds[0].shape[-1]
        dtype = embed.weight.dtype
        device = input_ids.device
        batch = len(seq_embeds)
        embeds = torch.zeros(batch, max_len, hidden, dtype=dtype, device=device)
        mask = torch.zeros(batch, max_len, dtype=attention_mask.dtype, device=device)
        out_labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=torch.long, device=device) if labels is not None else None
        for b, e in enumerate(seq_embeds):
            n = e.shape[0]
            sl = slice(max_len - n, max_len) if left_pad else slice(0, n)
            embeds[b, sl] = e.to(dtype)
            mask[b, sl] = 1
            if out_labels is not None:
                out_labels[b, sl] = seq_labels[b]
        return _Spliced(embeds, mask, _positions(mask), out_labels)

    # --- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> VLMOutput:
        """Logits over the spliced sequence; ``loss`` is next-token CE on supervised positions."""
        sp = self._splice(input_ids, attention_mask, labels, pixel_values, left_pad=False)
        mask = None if bool(sp.attention_mask.all()) else sp.attention_mask
        out = self.llm(inputs_embeds=sp.embeds, attention_mask=mask, position_ids=sp.position_ids, use_cache=False)
        loss = None
        if sp.labels is not None:
            loss = causal_lm_loss(out.logits, sp.labels)
        return VLMOutput(logits=out.logits, loss=loss, labels=sp.labels, attention_mask=sp.attention_mask)

    # --- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | list[list[int]] | list[int],
        pixel_values: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Greedy (``temperature=0``) or sampled decoding with a KV cache.

        ``input_ids`` is one prompt (list of ids) or a batch (list of lists / 2-D tensor
        without padding differences); prompts of different lengths are left-padded.
        Returns the new tokens of each sequence, stopped before ``</s>``.
        """
        prompts = _as_prompt_list(input_ids)
        if eos_token_id is None:
            eos_token_id = self.tokenizer.eos_id if self.tokenizer is not None else self.llm.config.eos_token_id
        device = next(self.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p) :] = 1
        sp = self._splice(ids, mask, None, pixel_values, left_pad=True)
        cache = DynamicCache(config=self.llm.config)
        attn = sp.attention_mask
        out = self.llm(inputs_embeds=sp.embeds, attention_mask=attn, position_ids=sp.position_ids,
                       cache=cache, use_cache=True, logits_to_keep=1)
        positions = sp.position_ids[:, -1:]
        finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        generated: list[list[int]] = [[] for _ in prompts]
        for _ in range(max_new_tokens):
            next_tok = _pick(out.logits[:, -1].float(), temperature, top_p, generator)
            for b in range(len(prompts)):
                if not finished[b]:
                    if int(next_tok[b]) == eos_token_id:
                        finished[b] = True
                    else:
                        generated[b].append(int(next_tok[b]))
            if bool(finished.all()):
                break
            positions = positions + 1
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self.llm(input_ids=next_tok[:, None], attention_mask=attn, position_ids=positions,
                           cache=cache, use_cache=True)
        return generated

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not -100 (fp32)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens (correct for left and right padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _as_prompt_list(input_ids: torch.Tensor | list) -> list[list[int]]:
    if isinstance(input_ids, torch.Tensor):
        return [row.tolist() for row in (input_ids if input_ids.dim() == 2 else input_ids[None])]
    if input_ids and isinstance(input_ids[0], int):
        return [list(input_ids)]
    return [list(p) for p in input_ids]


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
