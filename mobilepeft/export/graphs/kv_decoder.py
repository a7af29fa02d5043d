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

    def __init__(self, model: MobileVLMForCausalLM, max_seq_len: int, *, contiguous_writes: bool = False,
                 fused_attention: bool = False) -> None:
        super().__init__()
        # Core ML fuses scaled_dot_product_attention into one op; ExecuTorch decomposes it into copies of the
        # whole cache, so its program gets attention as batched matmuls straight on the caches (_attention).
        self.fused_attention = fused_attention
        # index_copy at arbitrary positions (ExecuTorch) or one slice starting at cache_position[0]
        # (Core ML has no index_copy; its slice_update takes a runtime offset). Runners always write
        # consecutive positions, so both compute the same thing.
        self.contiguous_writes = contiguous_writes
        llm = model.llm
        cfg = llm.config
        self.decoder = llm.model
        self.lm_head = llm.lm_head
        self.max_seq_len = max_seq_len
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # The bmm attention reads the caches as [heads, seq, head dim] with no batch axis: a [1,H,S,Dh] cache
        # viewed as 3-D is a static reshape, which XNNPACK performs as a copy of the whole cache per layer.
        shape = (self.num_kv_heads, max_seq_len, self.head_dim)
        if fused_attention:
            shape = (1, *shape)
        dtype = next(llm.parameters()).dtype
        # One buffer per layer and kind: whole-buffer updates lower to far smaller graphs than
        # slices of one stacked cache.
        for i in range(cfg.num_hidden_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)

    @property
    def max_tokens_per_call(self) -> int:
        """Longest input a call takes: a contiguous write needs room after the prompt for one more token."""
        return self.max_seq_len - 1 if self.contiguous_writes else self.max_seq_len

    def reset(self) -> None:
        """Empty the caches (a new conversation)."""
        for name, buffer in self.named_buffers(recurse=False):
            if "_cache_" in name:
                buffer.zero_()

    def forward(self, inputs_embeds: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        caches = [(getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")) for i in range(len(self.decoder.layers))]
        return self.decode(inputs_embeds, cache_position, caches, in_place=True)[0]

    def decode(self, inputs_embeds: torch.Tensor, cache_position: torch.Tensor,
               caches: list[tuple[torch.Tensor, torch.Tensor]], *, in_place: bool
               ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits and the per-layer ``(keys, values)`` caches after writing this step's entries.

        ``in_place`` writes into the given tensors (the module's buffers: a stateful program);
        otherwise new caches are returned and the inputs are left alone (caches as model I/O).
        """
        hidden = inputs_embeds
        positions = cache_position[None, :]
        cos, sin = self.decoder.rotary_emb(hidden, positions)
        keys = torch.arange(self.max_seq_len, device=hidden.device)
        visible = keys[None, :] <= cache_position[:, None]  # [T, max_seq_len]: causal over the cache
        # Additive, built once per call and shared by every layer (a boolean mask costs a select per layer).
        mask = visible if self.fused_attention else torch.where(visible, 0.0, float("-inf")).to(hidden.dtype)
        updated = []
        for layer, (k_cache, v_cache) in zip(self.decoder.layers, caches, strict=True):
            residual = hidden
            out, k_cache, v_cache = self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin,
                                                    cache_position, mask, k_cache, v_cache, in_place)
            hidden = residual + out
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
            updated.append((k_cache, v_cache))
        return self.lm_head(self.decoder.norm(hidden)), updated

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   cache_position: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   in_place: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        q = attn.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if keys.dim() == 3:
            k, v = k[0], v[0]
        keys = self._write(keys, k, cache_position, in_place)
        values = self._write(values, v, cache_position, in_place)
        # Grouped-query heads repeat the cache (MobileVLM's decoders have none; the tiny test model does).
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            keys_all, values_all = keys.repeat_interleave(groups, dim=-3), values.repeat_interleave(groups, dim=-3)
        else:
            keys_all, values_all = keys, values
        if self.fused_attention:
            out = F.scaled_dot_product_attention(q, keys_all, values_all, attn_mask=mask[None, None])
            return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), keys, values
        # Attention as 3-D batched matmuls over the heads, straight on the [H,S,Dh] caches: SDPA's decomposition
        # broadcast-copied the whole cache every layer (docs/deploy-executorch.md).
        q = q.reshape(self.num_heads, length, self.head_dim) * self.head_dim ** -0.5
        scores = torch.bmm(q, keys_all.transpose(1, 2)) + mask
        out = torch.bmm(torch.softmax(scores, dim=-1), values_all)
        return attn.o_proj(out.transpose(0, 1).reshape(batch, length, -1)), keys, values

    def _write(self, cache: torch.Tensor, update: torch.Tensor, cache_position: torch.Tensor,
               in_place: bool) -> torch.Tensor:
        """Put ``update`` ([..., H, T, Dh], as ``cache``) at ``cache_position`` along the sequence axis of ``cache``."""
        seq = cache.dim() - 2
        if not self.contiguous_writes:
            # In place on a buffer, this becomes a mutable buffer in torch.export.
            return cache.index_copy_(seq, cache_position, update) if in_place else cache.index_copy(seq, cache_position, update)
        start = cache_position[0].item()
        length = update.shape[seq]
        torch._check(start >= 0)
        torch._check(start + length <= self.max_seq_len)
        if in_place:
            cache[..., start:start + length, :] = update
            return cache
        return torch.slice_scatter(cache, update, dim=seq, start=start, end=start + length)


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
