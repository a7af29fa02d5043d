"""One runtime version from exporter to apps (docs/mobile.md, "One runtime version"): the ExecuTorch
release the exporter pins is the one the Android AAR, the iOS Swift package and the installed wheel
(which the native runner builds against) carry, and ONNX Runtime training is 1.19.2 everywhere. A .pte
is only guaranteed to load in its own release's runtime, so a drifted pin is a bug even while it builds."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one(pattern: str, text: str, where: str) -> str:
    found = set(re.findall(pattern, text, flags=re.M))
    assert len(found) == 1, f"{where}: expected one pin matching {pattern!r}, found {sorted(found)}"
    return found.pop()


PINNED_FILES = ("pyproject.toml", "android_demo/app/app/build.gradle.kts", "android_demo/app/core/build.gradle.kts",
                "ios_demo/project.yml", "ios_demo/Podfile")


def pins(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """Every pin by platform: {"executorch": {...}, "onnxruntime-training": {...}}."""
    pyproject = (root / "pyproject.toml").read_text()
    gradle = "\n".join(p.read_text() for p in sorted((root / "android_demo" / "app").rglob("build.gradle.kts")))
    project = (root / "ios_demo" / "project.yml").read_text()
    podfile = (root / "ios_demo" / "Podfile").read_text()
    return {
        "executorch": {
            "pyproject.toml": _one(r'"executorch==([0-9.]+)"', pyproject, "pyproject.toml"),
            "android build.gradle.kts": _one(r'"org\.pytorch:executorch-android:([0-9.]+)"', gradle, "build.gradle.kts"),
            "ios project.yml": _one(r"^\s+branch:\s*swiftpm-([0-9.]+)\s*$", project, "project.yml"),
            "ios runner build setting": _one(r'MOBILEPEFT_EXECUTORCH_VERSION=\\"([0-9.]+)\\"', project, "project.yml"),
        },
        "onnxruntime-training": {
            "pyproject.toml": _one(r'"onnxruntime-training==([0-9.]+)"', pyproject, "pyproject.toml"),
            "android build.gradle.kts": _one(r'"com\.microsoft\.onnxruntime:onnxruntime-training-android:([0-9.]+)"',
                                             gradle, "build.gradle.kts"),
            "ios Podfile": _one(r"pod 'onnxruntime-training-objc', '([0-9.]+)'", podfile, "Podfile"),
        },
    }


def disagreements(root: Path = ROOT) -> list[str]:
    return [f"{runtime} pins disagree: {by_place}" for runtime, by_place in pins(root).items()
            if len(set(by_place.values())) != 1]


def test_exporter_and_apps_pin_one_executorch_and_one_onnxruntime_release():
    assert disagreements() == []
    assert pins()["onnxruntime-training"]["pyproject.toml"] == "1.19.2"  # the last release with training packages


def test_the_installed_wheels_are_the_pinned_releases():
    """The wheel the exporter and the native runner use is the pinned one (a stale environment would
    export programs for another runtime than the apps ship)."""
    pinned = pins()
    assert version("executorch") == pinned["executorch"]["pyproject.toml"]
    assert version("onnxruntime-training") == pinned["onnxruntime-training"]["pyproject.toml"]


def test_a_drifted_app_pin_is_a_disagreement(tmp_path):
    """The check reads what the files say: the same files with the Android AAR or the iOS branch moved
    to another release are reported, naming the runtime and every place's version."""
    for relative in PINNED_FILES:
        if (ROOT / relative).is_file():
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relative).write_text((ROOT / relative).read_text())
    assert disagreements(tmp_path) == []
    gradle = tmp_path / "android_demo/app/app/build.gradle.kts"
    gradle.write_text(re.sub(r"executorch-android:[0-9.]+", "executorch-android:1.1.0", gradle.read_text()))
    found = disagreements(tmp_path)
    assert len(found) == 1 and "executorch pins disagree" in found[0] and "'android build.gradle.kts': '1.1.0'" in found[0]
