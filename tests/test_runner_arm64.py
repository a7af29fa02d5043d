"""The native runner on ARM, the CPU every phone has: `make runner-arm64` cross-compiles runner/ with
Debian's aarch64 toolchain against the aarch64 wheel of the pinned executorch release, and qemu-user
runs it on the tiny model's fp32 and 8da4w bundles of a trained LoRA adapter (merged in the fp32 one, kept
as data in the 8da4w one). Its
answers must equal the x86 runner's: fp32 identical, 8da4w at least 95% identical. Timing under qemu
means nothing; this checks correctness only. Slow (~3 min): `make test-slow`, which CI runs, after
.ci/run installs the cross toolchain and qemu."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import build_native_runner, train_adapter
from PIL import Image

from mobilepeft.export.executorch.exporter import export_executorch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SYSROOT = Path("/usr/aarch64-linux-gnu")
# A phone's core (ARMv8.2 with dot product: Snapdragon 855 to Tensor G1 class). qemu's default "max" CPU also
# enables SVE2/SME/I8MM, and there XNNPACK's 8da4w kernels under qemu answered 15 of 20 questions like x86.
QEMU_CPU = "cortex-a76"
QUESTIONS = 20
TRAIN_STEPS = 150


@pytest.fixture(scope="module")
def arm_runner() -> Path:
    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(tool) is None]
    if missing or not SYSROOT.is_dir():
        pytest.skip(f"{', '.join(missing) or SYSROOT} not found: apt-get install g++-aarch64-linux-gnu qemu-user "
                    "(.ci/run installs them)")
    done = subprocess.run(["make", "-o", ".venv/.installed", "runner-arm64"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    binary = ROOT / "build" / "runner-arm64" / "mobilepeft_runner"
    head = binary.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, "not an aarch64 ELF (EM_AARCH64)"
    return binary


@pytest.fixture(scope="module")
def cases(tiny_ckpt, synth_data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("arm64")
    # A trained adapter (the random tiny base alone answers with near-ties, which any rounding flips).
    adapter = train_adapter(tiny_ckpt, synth_data, root / "run", "lora", steps=TRAIN_STEPS)
    bundles = {"fp32": root / "fp32", "8da4w": root / "8da4w"}
    export_executorch(tiny_ckpt, bundles["fp32"], adapter_dir=adapter, echo=lambda _: None)
    export_executorch(tiny_ckpt, bundles["8da4w"], adapter_dir=adapter, quantize="8da4w", adapter_as_data=True,
                      echo=lambda _: None)
    questions = []
    for k, sample in enumerate(json.loads((synth_data / "val.json").read_text())[:QUESTIONS]):
        ppm = root / f"q{k}.ppm"
        Image.open(synth_data / sample["image"]).convert("RGB").save(ppm)
        questions.append({"id": sample["id"], "prompt": sample["conversations"][0]["value"], "image": str(ppm)})
    (root / "questions.json").write_text(json.dumps(questions))
    return {"bundles": bundles, "questions": root / "questions.json", "x86": build_native_runner(root / "x86-build")}


def _answers(command: list[str], bundle: Path, questions: Path, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run([*command, "answer", "--bundle", str(bundle), "--questions", str(questions),
                           "--max-new-tokens", "8"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return [a["text"] for a in json.loads(done.stdout)["passes"][0]["answers"]]


@pytest.mark.parametrize("kind", ["fp32", "8da4w"])
def test_the_arm64_runner_answers_like_the_x86_runner(arm_runner, cases, kind):
    bundle = cases["bundles"][kind]
    x86 = _answers([str(cases["x86"])], bundle, cases["questions"])
    arm = _answers(["qemu-aarch64", str(arm_runner)], bundle, cases["questions"], {"QEMU_LD_PREFIX": str(SYSROOT), "QEMU_CPU": QEMU_CPU})
    same = sum(a == b for a, b in zip(x86, arm, strict=True)) / len(x86)
    print(f"{kind}: {same:.0%} of {len(x86)} answers identical on aarch64 ({QEMU_CPU} under qemu) and x86")
    assert len(x86) == QUESTIONS and any(x86)
    assert same == 1.0 if kind == "fp32" else same >= 0.95, list(zip(x86, arm, strict=True))
