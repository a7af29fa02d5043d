"""``mobilepeft bench``: one latency harness for a bundle, with the JSON keys of docs/mobile.md.

A run is what a chat turn costs: encode one image, prefill the image tokens plus ``prompt_len``
text tokens in one ``text_decoder`` call, then ``gen_len`` greedy decode steps (token embedding +
one-token decoder call each). ``--coreml`` runs the bundle's Core ML packages instead (macOS only:
Core ML predicts nowhere else; the cache is Core ML state). ``--compare eager`` times the same three export-friendly modules
in PyTorch eager on the same inputs and threads, in the same process, and reports ratios.
Figures are medians over ``runs`` after ``warmup`` runs, with min and max.
"""

from __future__ import annotations

import json
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

# The keys every harness writes (this one, the native runner in runner/, the Android and iOS apps): docs/mobile.md.
BENCH_SCHEMA = json.loads(Path(__file__).with_name("bench.schema.json").read_text(encoding="utf-8"))
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
    """One runtime's calls for a chat turn: ``vision(pixels)`` -> image tokens; ``prefill(image_tokens,
    prompt_ids)`` -> logits of the whole prompt (a new conversation); ``step(token, position)`` -> logits."""

    def __init__(self, vision: Callable, prefill: Callable, step: Callable) -> None:
        self.vision, self.prefill, self.step = vision, prefill, step


def _three_methods(vision: Callable, embed: Callable, decode: Callable) -> Methods:
    """ExecuTorch's convention (and its eager modules): embeddings in, image tokens spliced in front."""
    def prefill(image_tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        embeds = torch.cat([image_tokens, embed(prompt)], dim=1)
        return decode(embeds, torch.arange(embeds.shape[1]))

    def step(token: int, position: int) -> torch.Tensor:
        return decode(embed(torch.tensor([[token]])), torch.tensor([position]))

    return Methods(vision, prefill, step)


def _load_executorch(bundle: Bundle) -> tuple[Methods, float]:
    from mobilepeft.export.executorch.exporter import executorch_methods, load_executorch_kernels
    from mobilepeft.export.executorch.runtime_version import check_runtime_version

    check_runtime_version(bundle)
    load_executorch_kernels()  # an import, outside the timed load
    t0 = time.perf_counter()
    methods = executorch_methods(bundle.file(bundle.section("executorch")["file"]))
    load_ms = (time.perf_counter() - t0) * 1000
    return _three_methods(methods["vision_encoder"], methods["token_embedding"], methods["text_decoder"]), load_ms


def _load_eager(bundle: Bundle) -> tuple[Methods, float]:
    from mobilepeft.adapters.inject import merge_and_unload
    from mobilepeft.export.executorch.exporter import export_modules
    from mobilepeft.loading import load_vlm

    source = bundle.section(_runtime_section(bundle))["source"]
    t0 = time.perf_counter()
    model = load_vlm(source["model"], adapter=source.get("adapter"), load_tokenizer=False)
    if source.get("adapter"):
        merge_and_unload(model)
    modules = export_modules(model, bundle.manifest["max_seq_len"])
    load_ms = (time.perf_counter() - t0) * 1000
    return _three_methods(modules["vision_encoder"], modules["token_embedding"], modules["text_decoder"]), load_ms


def _load_coreml(bundle: Bundle) -> tuple[Methods, float]:
    """The two packages through Core ML (macOS only: coremltools cannot predict elsewhere), the KV
    cache as Core ML state, each on the compute units the manifest advises."""
    section = bundle.section("coreml")
    if platform.system() != "Darwin":
        raise UserError("Core ML prediction needs macOS; coremltools can only convert and inspect on "
                        f"{platform.system()}", field="coreml",
                        hint="run `mobilepeft bench --coreml` on a Mac, or the iOS app's benchmark (docs/deploy-coreml.md)")
    if not section["stateful_kv_cache"]:
        raise UserError("--coreml measures the stateful (iOS 18) packages", field="coreml",
                        hint="re-export with `mobilepeft export coreml --target iOS18`")
    import coremltools as ct
    import numpy as np

    units = {"all": ct.ComputeUnit.ALL, "cpuAndGPU": ct.ComputeUnit.CPU_AND_GPU, "cpuOnly": ct.ComputeUnit.CPU_ONLY,
             "cpuAndNeuralEngine": ct.ComputeUnit.CPU_AND_NE}
    t0 = time.perf_counter()
    vision, decoder = (ct.models.MLModel(str(bundle.file(section[part]["file"])),
                                         compute_units=units[section["compute_units"][part]])
                       for part in ("vision_encoder", "text_decoder"))
    load_ms = (time.perf_counter() - t0) * 1000
    image_id = bundle.manifest["prompt"]["image_token_id"]
    turn: dict[str, Any] = {}

    def decode(ids: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        out = decoder.predict({"input_ids": ids.astype(np.int32), "image_embeds": turn["image"],
                               "cache_position": positions.astype(np.int32)}, turn["state"])
        return torch.from_numpy(out["logits"].astype(np.float32))

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        out = vision.predict({"pixel_values": pixels.numpy().astype(np.float16)})
        return torch.from_numpy(out["image_embeds"].astype(np.float32))

    def prefill(image_tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        # The decoder takes ids: the image span is image_token_id, filled from image_embeds inside.
        turn["state"], turn["image"] = decoder.make_state(), image_tokens.numpy().astype(np.float16)
        ids = np.concatenate([np.full((1, image_tokens.shape[1]), image_id), prompt.numpy()], axis=1)
        return decode(ids, np.arange(ids.shape[1]))

    def step(token: int, position: int) -> torch.Tensor:
        return decode(np.array([[token]]), np.array([position]))

    return Methods(encode, prefill, step), load_ms


def _one_run(methods: Methods, pixels: torch.Tensor, prompt: torch.Tensor, gen_len: int) -> dict[str, float]:
    with torch.no_grad():
        t0 = time.perf_counter()
        image_tokens = methods.vision(pixels)
        t1 = time.perf_counter()
        logits = methods.prefill(image_tokens, prompt)
        token = int(logits[0, -1].argmax())
        t2 = time.perf_counter()
        position = image_tokens.shape[1] + prompt.shape[1]
        for _ in range(gen_len):
            token = int(methods.step(token, position)[0, -1].argmax())
            position += 1
        t3 = time.perf_counter()
    return {
        "vision_encode_ms": (t1 - t0) * 1000,
        "prefill_tokens_per_s": (image_tokens.shape[1] + prompt.shape[1]) / (t2 - t1),
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
    """This process's RSS high-water mark in MiB.

    On Linux from ``VmHWM``: ``getrusage``'s maximum survives ``exec``, so a process started from a big one
    (a benchmark's subprocess) would report its parent's size at the fork."""
    import resource

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _runtime_section(bundle: Bundle) -> str:
    """The manifest section a bundle is benchmarked from (an ExecuTorch bundle, else a Core ML one)."""
    return "executorch" if "executorch" in bundle.manifest or "coreml" not in bundle.manifest else "coreml"


def load_runtime(bundle: Bundle, kind: str) -> tuple[Methods, float]:
    """The bundle's program on ExecuTorch (``executorch``), its Core ML packages (``coreml``, macOS) or its
    source model in PyTorch (``eager``)."""
    return {"executorch": _load_executorch, "coreml": _load_coreml, "eager": _load_eager}[kind](bundle)


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
                 coreml: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the bundle's ExecuTorch program (or, with ``coreml``, its Core ML packages on macOS),
    optionally beside PyTorch eager; returns the result JSON."""
    bundle = read_bundle(bundle_dir)
    runtime = "coreml" if coreml else "executorch"
    section = bundle.section(runtime)
    pixels, prompt = bench_inputs(bundle, settings)
    set_threads(settings.threads)
    runtimes = {runtime: load_runtime(bundle, runtime)}
    if compare_eager:
        runtimes["eager"] = load_runtime(bundle, "eager")
    summaries = measure(runtimes, pixels, prompt, settings, echo)
    result: dict[str, Any] = dict(
        summaries[runtime],
        peak_rss_mb=peak_rss_mb(), threads=settings.threads,
        backend=section.get("backend", "coreml"), quantization=section.get("quantization", section.get("compression")),
        device=f"host {platform.machine()} ({platform.node()})", runtime=runtime, harness="python",
        prompt_tokens=bundle.manifest["model"]["num_image_tokens"] + settings.prompt_len,
        generated_tokens=settings.gen_len, runs=settings.runs,
    )
    if compare_eager:
        result["eager"] = eager = summaries["eager"]
        result[f"{runtime}_over_eager"] = {k: result[k] / eager[k] for k in (*METRICS[2:4], "vision_encode_ms",
                                                                             "time_to_first_token_ms")}
    return result
