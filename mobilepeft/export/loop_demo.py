"""``mobilepeft demo``: the product's loop on the embedded default, end to end.

Train on the desktop (the training half, :func:`mobilepeft.demo.run_demo`) -> export the ONNX
Runtime training bundle the phone trains with and the ExecuTorch bundle it answers with (8da4w,
the adapter kept as data) -> personalize on the user's own data with ORT's training API -> write
``adapter.ptd`` from ORT's trained state -> answer the user's held-out questions: the native
runner loads the bundle once, answers with the desktop adapter, swaps the personalized file in and
answers again. docs/on-device-loop.md explains each step and the app calls behind it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mobilepeft.data.synth import USER_WORDS, write_personal_dataset
from mobilepeft.demo import TRAINING_STAGES, Stages, run_demo
from mobilepeft.errors import UserError
from mobilepeft.export.executorch.exporter import export_executorch
from mobilepeft.export.native_output import native_output_captured, tail
from mobilepeft.export.ort.exporter import export_onnx_training
from mobilepeft.export.ort.personalize import personalize
from mobilepeft.export.to_ptd import tensors_from_ort, write_bundle_adapter
from mobilepeft.io import write_json

#: The user's own data: new photos named in the user's words, and held-out questions about others.
PERSONAL_DATA = dict(n_train=96, n_val=32)
#: The phone's training run: what `mobilepeft personalize` replays with the bundle's ORT artifacts.
PERSONALIZE = dict(steps=120, lr=3e-3, batch_size=8)
#: The deployed model: int4 weights (groups of 32) with int8 dynamic activations on XNNPACK.
QUANTIZE = "8da4w"
LOOP_STAGES = 5
ANSWER_TOKENS = 4


@dataclass
class Pass:
    """One adapter's answers to the held-out questions."""

    adapter: str
    answers: list[str]
    correct: int
    swap_ms: float | None = None
    rss_before_swap_mb: float | None = None
    rss_after_swap_mb: float | None = None


def run_loop_demo(output_dir: Path, *, steps: int = 300, adapter: str = "lora", schedule: str | None = None,
                  runner: Path | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole loop in ``output_dir`` and print what it measured; returns (and writes to
    ``output_dir/demo.json``) the figures. ``runner`` is the native runner (``make runner``);
    without it the answers come from ExecuTorch's Python runtime, which reloads to switch adapters."""
    if runner is not None and not Path(runner).is_file():
        raise UserError("no native runner there", path=Path(runner), field="--runner",
                        hint="build it with `make runner` (build/runner/mobilepeft_runner), or leave --runner out")
    t0 = time.perf_counter()
    stages = Stages(TRAINING_STAGES + LOOP_STAGES, echo)
    trained = run_demo(output_dir, steps=steps, adapter=adapter, schedule=schedule, echo=echo, stages=stages)
    output_dir = trained.output_dir
    ort_dir, et_dir = output_dir / "bundles" / "ort", output_dir / "bundles" / "executorch"
    personal_dir, phone_dir = output_dir / "personal-data", output_dir / "phone"

    stages(f"ONNX Runtime training bundle (what the phone trains) -> {ort_dir}")
    with _native_noise_held():
        export_onnx_training(trained.model_dir, trained.adapter_dir, ort_dir, echo=_silent)
    stages(f"ExecuTorch bundle ({QUANTIZE}, XNNPACK), the LLM's adapter kept as data in adapter.ptd -> {et_dir}")
    with _native_noise_held():
        export_executorch(trained.model_dir, et_dir, adapter_dir=trained.adapter_dir, quantize=QUANTIZE,
                          adapter_as_data=True, echo=_silent)
    words = ", ".join(f"{shape}->{word}" for shape, word in USER_WORDS.items())
    stages(f"the user's own data: {PERSONAL_DATA['n_train']} new photos named in their words ({words}), "
           f"{PERSONAL_DATA['n_val']} held-out questions -> {personal_dir}")
    data = write_personal_dataset(personal_dir, **PERSONAL_DATA)
    stages(f"personalizing on the phone's runtime: {PERSONALIZE['steps']} ONNX Runtime training steps, then "
           f"adapter.ptd written from ORT's trained state -> {phone_dir}")
    with _native_noise_held():
        report = personalize(ort_dir, data["train_json"], phone_dir, eval_data=data["val_json"], echo=_silent,
                             **PERSONALIZE)
    personal_ptd = write_bundle_adapter(et_dir, tensors_from_ort(phone_dir / "checkpoint", ort_dir, et_dir),
                                        phone_dir / "adapter.ptd")
    questions_dir = output_dir / "questions"
    questions = _questions(data["val_json"], questions_dir)
    references = [q.pop("reference") for q in questions]
    if runner is not None:
        stages("answering the held-out questions with the native runner: load once, answer with the desktop "
               "adapter, swap in the personalized adapter.ptd (no reload), answer again")
        passes, speed = _native_answers(Path(runner), et_dir, questions, personal_ptd, references,
                                        questions_dir / "questions.json")
    else:
        stages("answering the held-out questions with ExecuTorch's Python runtime (no native runner: "
               "`make runner` builds it; this runtime reloads the program to switch adapters)")
        passes, speed = _python_answers(et_dir, questions, questions_dir, personal_ptd, references), {}

    seconds = time.perf_counter() - t0
    # What renaming the base's answers alone would reach: those that name the right shape.
    base_right_shape = sum(USER_WORDS.get(a.strip().lower()) == r for a, r in zip(passes[0].answers, references,
                                                                                 strict=True))
    figures = {"training": {"eval_before": trained.eval_before, "eval_after": trained.eval_after},
               "personalize": {k: v for k, v in asdict(report).items() if k != "train_losses"},
               "user_words": USER_WORDS, "references": references, "base_right_shape": base_right_shape,
               "passes": [asdict(p) for p in passes], "speed": speed,
               "files": {"model.pte": (et_dir / "model.pte").stat().st_size,
                         "adapter.ptd": personal_ptd.stat().st_size},
               "seconds": seconds}
    write_json(output_dir / "demo.json", figures)
    for line in ["", "  on the desktop (training)"] + trained.summary + [""] + _summary(figures, passes, ort_dir, et_dir, phone_dir, output_dir):
        echo(line)
    return figures


def _silent(_: str) -> None:
    pass


@contextlib.contextmanager
def _native_noise_held() -> Iterator[None]:
    """Hold back what the runtimes' native code prints straight to fd 1/2 (XNNPACK's cpuinfo probe,
    ORT's graph passes); shown if the block fails, so an error keeps its context."""
    held: list[str] = []
    try:
        with native_output_captured(1) as out, native_output_captured(2) as err:
            try:
                yield
            except BaseException:
                held = tail(err) + tail(out)
                raise
    finally:
        if held:
            sys.stderr.write("\n".join(held) + "\n")


def _questions(val_json: Path, out_dir: Path) -> list[dict[str, str]]:
    """The held-out questions, images as binary PPM (what the runner reads; an app decodes its photos)."""
    from PIL import Image

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    out = []
    for sample in json.loads(val_json.read_text()):
        ppm = out_dir / (Path(sample["image"]).stem + ".ppm")
        with Image.open(val_json.parent / sample["image"]) as image:
            image.convert("RGB").save(ppm)
        out.append({"id": sample["id"], "prompt": sample["conversations"][0]["value"], "image": ppm.name,
                    "reference": sample["conversations"][1]["value"]})
    return out


def _score(answers: list[str], references: list[str]) -> int:
    return sum(a.strip().lower() == r.strip().lower() for a, r in zip(answers, references, strict=True))


def _run_native(runner: Path, *args: str | Path) -> dict[str, Any]:
    done = subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"the native runner failed ({' '.join(map(str, args[:1]))}): "
                        f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}",
                        path=runner)
    return json.loads(done.stdout)


def _native_answers(runner: Path, et_dir: Path, questions: list[dict[str, str]], personal_ptd: Path,
                    references: list[str], questions_file: Path) -> tuple[list[Pass], dict[str, Any]]:
    write_json(questions_file, questions)
    result = _run_native(runner, "answer", "--bundle", et_dir, "--questions", questions_file, "--swap", personal_ptd,
                         "--max-new-tokens", ANSWER_TOKENS)
    passes = []
    for p in result["passes"]:
        answers = [a["text"] for a in p["answers"]]
        passes.append(Pass(p["adapter"], answers, _score(answers, references), p.get("swap_ms"),
                           p.get("rss_before_swap_mb"), p.get("rss_after_swap_mb")))
    bench = _run_native(runner, "bench", "--bundle", et_dir, "--swap", personal_ptd, "--runs", 3)
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "adapter_swap_ms", "time_to_first_token_after_swap_ms",
            "rss_before_swap_mb", "rss_after_swap_mb", "peak_rss_mb", "threads")
    return passes, {"load_ms": result["load_ms"], **{k: bench[k] for k in keys}}


def _python_answers(et_dir: Path, questions: list[dict[str, str]], folder: Path, personal_ptd: Path,
                    references: list[str]) -> list[Pass]:
    from mobilepeft.export.executorch.runner import BundleRunner

    passes = []
    for adapter in (None, personal_ptd):
        with _native_noise_held():
            runner = BundleRunner(et_dir, adapter=adapter)
            answers = [runner.generate(q["prompt"], folder / q["image"], max_new_tokens=ANSWER_TOKENS).text.strip()
                       for q in questions]
        passes.append(Pass(str(adapter or et_dir / "adapter.ptd"), answers, _score(answers, references)))
    return passes


def _summary(figures: dict[str, Any], passes: list[Pass], ort_dir: Path, et_dir: Path, phone_dir: Path,
             output_dir: Path) -> list[str]:
    base, personal = passes
    n = len(figures["references"])
    p = figures["personalize"]
    lines = [
        "  on the phone (the loop)",
        f"  personalize   ORT eval loss {p['eval_loss_before']:.3f} -> {p['eval_loss_after']:.3f} in {p['steps']} steps "
        f"(median step {p['train_step_ms_median']:.0f} ms, batch {p['batch_size']})",
        f"  user's words  before {base.correct}/{n} -> after {personal.correct}/{n} held-out answers in the user's "
        f"words ({', '.join(sorted(USER_WORDS.values()))})",
        f"                (before, the model answers {', '.join(sorted(set(base.answers)))}; {figures['base_right_shape']}/{n} of those "
        "name the right shape: what renaming the base's answers alone would reach)",
        f"  e.g.          {base.answers[0]!r} -> {personal.answers[0]!r} (reference {figures['references'][0]!r})",
    ]
    speed = figures["speed"]
    if speed:
        lines += [
            f"  swap          {personal.swap_ms:.2f} ms in the answering process (bench: median "
            f"{speed['adapter_swap_ms']:.2f} ms); RSS {personal.rss_before_swap_mb:.1f} -> "
            f"{personal.rss_after_swap_mb:.1f} MB: the base is not reloaded",
            f"  speed         decode {speed['decode_tokens_per_s']:.0f} tok/s, prefill "
            f"{speed['prefill_tokens_per_s']:.0f} tok/s, first token after a swap "
            f"{speed['time_to_first_token_after_swap_ms']:.1f} ms ({QUANTIZE}, {speed['threads']} threads, native runner)",
        ]
    files = figures["files"]
    lines += [
        f"  sizes         adapter.ptd {files['adapter.ptd'] / 1e6:.2f} MB vs model.pte {files['model.pte'] / 1e6:.1f} MB",
        f"  ORT bundle    {ort_dir}  (the phone trains with it)",
        f"  ET bundle     {et_dir}  (model.pte + adapter.ptd: the desktop adapter)",
        f"  personalized  {phone_dir / 'adapter.ptd'}  (+ ORT checkpoint {phone_dir / 'checkpoint'})",
        f"  figures       {output_dir / 'demo.json'}",
        f"  done in {figures['seconds']:.0f} s",
    ]
    return lines
