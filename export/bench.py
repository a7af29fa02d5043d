"""``mobilepeft bench``: one latency harness for an ExecuTorch bundle, with the JSON keys of DESIGN.md §8.

A run is what a chat turn costs: encode one image, prefill the image tokens plus ``prompt_len``
text tokens in one ``text_decoder`` call, then ``gen_len`` greedy decode steps (token embedding +
one-token decoder call each). ``--compare eager`` times the same three export-friendly modules
in PyTorch eager on the same inputs and threads, in the same process, and reports ratios.
Figures are medians over ``runs`` after ``warmup`` runs, with min and max.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle, read_bundle

METRICS = ("model_load_time_ms", "vision_encode_ms", "prefill_tokens_per_s", "decode_tokens_per_s",
           "time_to_first_token_ms")


@dataclass
class BenchSettings:
    threads: int = 2
    prompt_len: int = 32
    gen_len: int = 32
    runs: int = 5
    warmup: int = 1


class Methods:
    """The three callables of one runtime: ``vision(pixels)``, ``embed(tokens)``, ``decode(embeds, positions)``."""

    def __init__(self, vision: Callable, embed: Callable, decode: Callable) -> None:
        self.vision, self.embed, self.decode = vision, embed, decode


def _load_executorch(bundle: Bundle) -> tuple[Methods, float]:
    from mobilepeft.export.executorch_export import executorch_methods, load_executorch_kernels

    load_executorch_kernels()  # an import, outside the timed load
    t0 = time.perf_counter()
    methods = executorch_methods(bundle.file(bundle.section("executorch")["file"]))
    load_ms = (time.perf_counter() - t0) * 1000
    return Methods(methods["vision_encoder"], methods["token_embedding"], methods["text_decoder"]), load_ms


def _load_eager(bundle: Bundle) -> tuple[Methods, float]:
    from mobilepeft.adapters.inject import merge_and_unload
    from mobilepeft.export.executorch_export import export_modules
    from mobilepeft.loading import load_vlm

    source = bundle.section("executorch")["source"]
    t0 = time.perf_counter()
    model = load_vlm(source["model"], adapter=source.get("adapter"), load_tokenizer=False)
    if source.get("adapter"):
        merge_and_unload(model)
    modules = export_modules(model, bundle.manifest["max_seq_len"])
    load_ms = (time.perf_counter() - t0) * 1000
    return Methods(modules["vision_encoder"], modules["token_embedding"], modules["text_decoder"]), load_ms


def _one_run(methods: Methods, pixels: torch.Tensor, prompt: torch.Tensor, gen_len: int) -> dict[str, float]:
    with torch.no_grad():
        t0 = time.perf_counter()
        image_tokens = methods.vision(pixels)
        t1 = time.perf_counter()
        embeds = torch.cat([image_tokens, methods.embed(prompt)], dim=1)
        logits = methods.decode(embeds, torch.arange(embeds.shape[1]))
        token = int(logits[0, -1].argmax())
        t2 = time.perf_counter()
        position = embeds.shape[1]
        for _ in range(gen_len):
            logits = methods.decode(methods.embed(torch.tensor([[token]])), torch.tensor([position]))
            token = int(logits[0, -1].argmax())
            position += 1
        t3 = time.perf_counter()
    return {
        "vision_encode_ms": (t1 - t0) * 1000,
        "prefill_tokens_per_s": embeds.shape[1] / (t2 - t1),
        "decode_tokens_per_s": gen_len / (t3 - t2),
        "time_to_first_token_ms": (t2 - t0) * 1000,
    }


def _summary(samples: list[dict[str, float]], load_ms: float) -> dict[str, float]:
    out: dict[str, float] = {"model_load_time_ms": load_ms}
    for key in METRICS[1:]:
        values = [s[key] for s in samples]
        out[key] = statistics.median(values)
        out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    return out


def peak_rss_mb() -> float:
    """This process's RSS high-water mark in MiB (Linux VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_runtime(bundle: Bundle, kind: str) -> tuple[Methods, float]:
    """The bundle's program on ExecuTorch (``executorch``) or its source model in PyTorch (``eager``)."""
    return {"executorch": _load_executorch, "eager": _load_eager}[kind](bundle)


def bench_inputs(bundle: Bundle, settings: BenchSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random image and ``prompt_len`` prompt tokens that fit the bundle (same seed everywhere)."""
    max_seq = bundle.manifest["max_seq_len"]
    n_image = bundle.manifest["model"]["num_image_tokens"]
    if n_image + settings.prompt_len + settings.gen_len + 1 > max_seq:
        raise UserError(f"image tokens ({n_image}) + --prompt-len + --gen-len exceed the bundle's max_seq_len "
                        f"{max_seq}", field="gen-len", hint="shorten them or re-export with a larger --max-seq-len")
    size = bundle.manifest["image_preprocessing"]["size"]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.empty(1, 3, size, size).uniform_(-1.5, 1.5, generator=generator)
    vocab = bundle.manifest["model"]["vocab_size"]
    return pixels, torch.randint(3, min(vocab, 500), (1, settings.prompt_len), generator=generator)


def set_threads(threads: int) -> None:
    """The same thread count for PyTorch and ExecuTorch's (XNNPACK's) thread pool."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    torch.set_num_threads(threads)
    _unsafe_reset_threadpool(threads)


def measure(runtimes: dict[str, tuple[Methods, float]], pixels: torch.Tensor, prompt: torch.Tensor,
            settings: BenchSettings, echo: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Time every runtime on the same inputs, interleaved run by run (machine noise hits all alike)."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runtimes}
    for i in range(settings.warmup + settings.runs):
        for name, (methods, _) in runtimes.items():
            result = _one_run(methods, pixels, prompt, settings.gen_len)
            if i >= settings.warmup:
                samples[name].append(result)
        echo(f"run {i + 1}/{settings.warmup + settings.runs}" + (" (warm-up)" if i < settings.warmup else ""))
    return {name: _summary(samples[name], load_ms) for name, (_, load_ms) in runtimes.items()}


def bench_bundle(bundle_dir: str | Path, settings: BenchSettings, *, compare_eager: bool = False,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the bundle (and optionally PyTorch eager); returns the result JSON."""
    bundle = read_bundle(bundle_dir)
    section = bundle.section("executorch")
    pixels, prompt = bench_inputs(bundle, settings)
    set_threads(settings.threads)
    runtimes = {"executorch": load_runtime(bundle, "executorch")}
    if compare_eager:
        runtimes["eager"] = load_runtime(bundle, "eager")
    summaries = measure(runtimes, pixels, prompt, settings, echo)
    result: dict[str, Any] = dict(
        summaries["executorch"],
        peak_rss_mb=peak_rss_mb(), threads=settings.threads, backend=section["backend"],
        quantization=section["quantization"], device=f"host {platform.machine()} ({platform.node()})",
        prompt_tokens=bundle.manifest["model"]["num_image_tokens"] + settings.prompt_len,
        generated_tokens=settings.gen_len, runs=settings.runs,
    )
    if compare_eager:
        result["eager"] = eager = summaries["eager"]
        result["executorch_over_eager"] = {k: result[k] / eager[k] for k in (*METRICS[2:4], "vision_encode_ms",
                                                                             "time_to_first_token_ms")}
    return result
