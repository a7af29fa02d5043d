"""The aarch64 Linux C++ runtime of the installed ExecuTorch release, for cross-compiling the runner
(`make runner-arm64`): pip downloads that release's manylinux aarch64 wheel from the package registry
and its runtime (lib/*.so, include/, the CMake package) is unpacked into the target folder.

    python runner/arm64_runtime.py build/arm64   # -> build/arm64/executorch
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

PLATFORM = "manylinux_2_28_aarch64"
PARTS = ("executorch/lib/", "executorch/include/", "executorch/share/")


def main(target: Path) -> None:
    release = version("executorch")
    marker = target / "executorch" / f".release-{release}"
    if marker.is_file():
        return
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--platform", PLATFORM, "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
                               "--dest", scratch, f"executorch=={release}"], capture_output=True, text=True)
        wheels = list(Path(scratch).glob("executorch-*.whl"))
        if done.returncode != 0 or not wheels:
            sys.exit(f"error: no {PLATFORM} wheel of executorch=={release} could be downloaded:\n{done.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith(PARTS)]
            if not any(m.endswith("lib/libexecutorch.so") for m in members):
                sys.exit(f"error: {wheels[0].name} ships no lib/libexecutorch.so to link the runner against")
            wheel.extractall(target, members)
    marker.touch()
    print(f"ExecuTorch {release} aarch64 runtime in {target / 'executorch'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
