"""llama.cpp, the peer most users would pick instead, on the same LLaMA decoder as our bundles.

``write_gguf`` writes a MobileVLM checkpoint's language model as a GGUF file with the ``gguf``
package (llama.cpp's own writer library), tensor by tensor so the 1.7B shape never sits in memory
whole: linear weights Q4_0 (int4, symmetric blocks of 32 with one fp16 scale — the same grouping
as our 8da4w), ``output``/``token_embd`` Q8_0 (as our 8da4w keeps lm_head and embeddings at int8),
norms f32. ``--weights f32`` keeps everything f32, which ``check`` uses to prove the conversion
(Q/K rows permuted to llama.cpp's rotary layout) gives the PyTorch model's logits.

``bench`` times prefill and greedy decode through ``llama-cpp-python`` (``Llama.eval``: the
llama.cpp decode loop, no sampling overhead beyond an argmax) with the same token counts and
threads as ``mobilepeft bench``. Needs ``pip install llama-cpp-python gguf`` (built from source
by pip; about 10 minutes on 2 cores).

    python benchmarks/llamacpp_peer.py check --model outputs/demo/model
    python benchmarks/llamacpp_peer.py write --model M --out M.gguf
    python benchmarks/llamacpp_peer.py bench --gguf M.gguf --threads 2 --prompt-tokens 176 --gen-len 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

NAMES = {  # MobileVLM (HF LLaMA) key -> GGUF tensor name; {i} is the layer
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def _gguf_name(key: str) -> str | None:
    parts = key.split(".")
    if key.startswith("model.layers."):
        layer = parts[2]
        template = ".".join(parts[:2] + ["{i}"] + parts[3:])
        return NAMES[template].format(i=layer) if template in NAMES else None
    return NAMES.get(key)


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """The language model's tensors as float32 numpy arrays, one at a time (vision tower skipped)."""
    from safetensors import safe_open

    from mobilepeft.models.checkpoint import read_state_dict, weight_layout

    fmt, file = weight_layout(model_dir)
    if fmt == "sharded-safetensors":
        shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        for shard in shards:
            with safe_open(str(model_dir / shard), framework="pt") as f:
                for key in f.keys():
                    if _gguf_name(key):
                        yield key, f.get_tensor(key).float().numpy()
    else:
        for key, tensor in read_state_dict(model_dir).items():
            if _gguf_name(key):
                yield key, tensor.float().numpy()


def _rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF LLaMA pairs rotary dims (j, j + d/2); llama.cpp's LLaMA pairs (2j, 2j + 1): reorder each head's rows."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model_dir: Path, out: Path, weights: str = "q4_0") -> Path:
    import gguf

    from mobilepeft.models.config import MobileVLMConfig
    from mobilepeft.models.tokenizer import Tokenizer

    cfg = MobileVLMConfig.from_dir(model_dir).llama_config()
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: never a half-written GGUF
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_rope_dimension_count(cfg.hidden_size // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(json.loads((model_dir / "config.json").read_text()).get("rope_theta", 10000.0))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if weights == "q4_0" else gguf.LlamaFileType.ALL_F32)
    # Tokenizer: the checkpoint's SentencePiece pieces, padded with unused pieces up to the model's
    # vocabulary (the 1.7B-shape preset has a 32000-row embedding and a small tokenizer).
    sp = Tokenizer(model_dir)._sp
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
    scores = [sp.GetScore(i) for i in range(sp.GetPieceSize())]
    types = [2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 6 if sp.IsByte(i) else 1
             for i in range(sp.GetPieceSize())]
    for i in range(len(pieces), cfg.vocab_size):
        pieces.append(f"<unused{i}>")
        scores.append(-1e9)
        types.append(5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    for key, array in _tensors(model_dir):
        name = _gguf_name(key)
        if name.endswith("attn_q.weight"):
            array = _rotary_permute(array, heads)
        elif name.endswith("attn_k.weight"):
            array = _rotary_permute(array, kv_heads)
        if weights == "f32" or array.ndim == 1:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
            continue
        qtype = gguf.GGMLQuantizationType.Q8_0 if name in ("output.weight", "token_embd.weight") \
            else gguf.GGMLQuantizationType.Q4_0
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    tmp.replace(out)
    return out


def _llama(gguf_path: Path, threads: int, n_ctx: int):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                 n_threads_batch=threads, verbose=False)


def _last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token (llama-cpp-python >= 0.3 keeps ``scores`` only with logits_all)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def check(model_dir: Path) -> float:
    """f32 GGUF through llama.cpp vs the PyTorch model: max relative logit difference on a text prompt."""
    import torch

    from mobilepeft.data.template import build_prompt_ids
    from mobilepeft.loading import load_vlm

    model = load_vlm(model_dir)
    ids = build_prompt_ids("What shape is shown? Answer in one word.", model.tokenizer)
    with torch.no_grad():
        reference = model.llm(torch.tensor([ids])).logits[0, -1].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        llm = _llama(write_gguf(model_dir, Path(tmp) / "f32.gguf", "f32"), 1, 256)
        llm.eval(ids)
        logits = _last_logits(llm).copy()
    return float(np.abs(logits - reference).max() / np.abs(reference).max())


def bench(gguf_path: Path, threads: int, prompt_tokens: int, gen_len: int, runs: int, warmup: int) -> dict:
    """Prefill ``prompt_tokens`` then ``gen_len`` greedy decode steps; medians (min, max) over ``runs``; the build's
    CPU kernels (``system_info``: which instruction sets llama.cpp was compiled to use)."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = _llama(gguf_path, threads, prompt_tokens + gen_len + 8)
    load_ms = (time.perf_counter() - t0) * 1000
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, 500, prompt_tokens)]
    prefill, decode = [], []
    for i in range(warmup + runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        token = int(np.argmax(_last_logits(llm)))
        for _ in range(gen_len):
            llm.eval([token])
            token = int(np.argmax(_last_logits(llm)))
        t2 = time.perf_counter()
        if i >= warmup:
            prefill.append(prompt_tokens / (t1 - t0))
            decode.append(gen_len / (t2 - t1))
    from mobilepeft.export.bench import peak_rss_mb

    return {"model_load_time_ms": load_ms,
            "prefill_tokens_per_s": statistics.median(prefill), "prefill_tokens_per_s_min": min(prefill),
            "prefill_tokens_per_s_max": max(prefill),
            "decode_tokens_per_s": statistics.median(decode), "decode_tokens_per_s_min": min(decode),
            "decode_tokens_per_s_max": max(decode), "peak_rss_mb": peak_rss_mb(), "threads": threads,
            "gguf_bytes": gguf_path.stat().st_size, "llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="f32 GGUF logits vs PyTorch")
    c.add_argument("--model", type=Path, required=True)
    w = sub.add_parser("write", help="write a GGUF")
    w.add_argument("--model", type=Path, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--weights", choices=["q4_0", "f32"], default="q4_0")
    b = sub.add_parser("bench", help="time prefill and decode; prints JSON")
    b.add_argument("--gguf", type=Path, required=True)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--prompt-tokens", type=int, default=176)
    b.add_argument("--gen-len", type=int, default=32)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "check":
        print(json.dumps({"f32_gguf_vs_pytorch_rel_diff": check(args.model)}))
    elif args.cmd == "write":
        print(write_gguf(args.model, args.out, args.weights))
    else:
        print(json.dumps(bench(args.gguf, args.threads, args.prompt_tokens, args.gen_len, args.runs, args.warmup)))


if __name__ == "__main__":
    sys.exit(main())
