"""Which ExecuTorch release wrote a bundle's program, and whether this runtime may load it.

A ``.pte`` records no version of its own, and ExecuTorch guarantees only that a program loads in its
own release's runtime or the next minor one; the operator set grows between minors. The exporter
writes its release into the manifest (``executorch.runtime_version``) and every runtime — these
Python bindings, the native runner and the apps, pinned to one release (docs/mobile.md, "One runtime
version") — refuses another minor release before loading, naming both versions.
"""

from __future__ import annotations

from importlib.metadata import version

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle


def executorch_version() -> str:
    """The installed ExecuTorch release (the exporter's, and the Python runtime's)."""
    return version("executorch")


def _minor(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split("+")[0].split(".")[:2])


def check_runtime_version(bundle: Bundle, runtime: str | None = None) -> None:
    """Refuse a bundle exported by another minor ExecuTorch release than ``runtime`` (default: installed)."""
    runtime = runtime or executorch_version()
    exported = bundle.section("executorch")["runtime_version"]
    if _minor(exported) != _minor(runtime):
        raise UserError(f"the program was exported with ExecuTorch {exported}; this runtime is ExecuTorch {runtime}, "
                        "and a program loads only in its own minor release's runtime", path=bundle.path,
                        field="executorch.runtime_version",
                        hint=f"re-export the bundle with executorch=={runtime}, or run it with an ExecuTorch "
                             f"{'.'.join(map(str, _minor(exported)))} runtime")
