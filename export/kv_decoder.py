"""Export-friendly MobileVLM text decoder with a static KV cache (ExecuTorch, Core ML).

``StaticCacheDecoder`` computes exactly what ``model.llm`` computes, but in the shape on-device
runtimes need: fixed-size key/value caches held as mutable buffers (updated in place at
``cache_position``), an explicit causal mask over the cache, no data-dependent control flow,
and embeddings as input (so image tokens and text tokens enter the same way, ExecuTorch's
multimodal convention: ``token_embedding`` -> ``text_decoder``). It reuses the model's own
modules (projections, RMSNorms, MLPs, rotary embedding), so a merged model needs no weight
conversion. Adapters must be merged first (``mobilepeft merge``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from mobilepeft.models.mobilevlm import MobileVLMForCausalLM


class StaticCacheDecoder(nn.Module):
    """``(inputs_embeds [1,T,D], cache_position [T] int64) -> logits [1,T,V]``, caches updated in place."""

    def __init__(self, model: MobileVLMForCausalLM, max_seq_len: int) -> None:
        super().__init__()
        llm = model.llm
        cfg = llm.config
        self.decoder = llm.model
        self.lm_head = llm.lm_head
        self.max_seq_len = max_seq_len
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (1, self.num_kv_heads, max_seq_len, self.head_dim)
        dtype = next(llm.parameters()).dtype
        # One buffer per layer and kind: whole-buffer updates lower to far smaller graphs than
        # slices of one stacked cache.
        for i in range(cfg.num_hidden_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)

    def reset(self) -> None:
        """Empty the caches (a new conversation)."""
        for name, buffer in self.named_buffers(recurse=False):
            if "_cache_" in name:
                buffer.zero_()

    def forward(self, inputs_embeds: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        hidden = inputs_embeds
        positions = cache_position[None, :]
        cos, sin = self.decoder.rotary_emb(hidden, positions)
        keys = torch.arange(self.max_seq_len, device=hidden.device)
        mask = keys[None, :] <= cache_position[:, None]  # [T, max_seq_len]: causal over the cache
        for i, layer in enumerate(self.decoder.layers):
            residual = hidden
            hidden = residual + self._attention(i, layer.self_attn, layer.input_layernorm(hidden), cos, sin,
                                                cache_position, mask)
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm_head(self.decoder.norm(hidden))

    def _attention(self, index: int, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   cache_position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = attn.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        # In-place update of this layer's slice: becomes a mutable buffer in torch.export.
        keys, values = getattr(self, f"k_cache_{index}"), getattr(self, f"v_cache_{index}")
        keys.index_copy_(2, cache_position, k)
        values.index_copy_(2, cache_position, v)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[None, None])
        return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class TokenEmbedding(nn.Module):
    """``token ids [1,T] int64 -> embeddings [1,T,D]`` (ExecuTorch's ``token_embedding`` method)."""

    def __init__(self, model: MobileVLMForCausalLM) -> None:
        super().__init__()
        self.embed_tokens = model.llm.get_input_embeddings()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Without padding_idx (it only shapes gradients): ExecuTorch's int8-embedding fusion
        # matches the plain embedding(weight, indices) pattern.
        return F.embedding(tokens, self.embed_tokens.weight)


@torch.no_grad()
def greedy_generate(decoder: StaticCacheDecoder, embed: TokenEmbedding, prefix_embeds: torch.Tensor,
                    max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy decoding through the static-cache modules: the loop a runner performs.

    ``prefix_embeds`` [1,T,D] is the whole prompt (text and image tokens) in embedding space.
    """
    decoder.reset()
    length = prefix_embeds.shape[1]
    logits = decoder(prefix_embeds, torch.arange(length))
    tokens: list[int] = []
    position = length
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        if token == eos_id or position >= decoder.max_seq_len:
            break
        tokens.append(token)
        logits = decoder(embed(torch.tensor([[token]])), torch.tensor([position]))
        position += 1
    return tokens
