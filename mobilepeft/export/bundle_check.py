"""``mobilepeft bundle check``: verify any bundle before shipping it to a phone.

Every kind of bundle gets the same first check, the manifest against the schema and every file
against its SHA-256; then each runtime section is opened by its own runtime:

- ``onnx_training``: ORT's eval loss on ``selftest.npz`` equals the PyTorch loss recorded at
  export, and one training step runs (:func:`mobilepeft.export.ort.personalize.run_selftest`);
- ``executorch``: the ExecuTorch runtime loads the program, runs each method on inputs of the
  manifest's shapes and returns outputs of the manifest's shapes, all finite;
- ``coreml``: each package declares the manifest's inputs, outputs and states (Core ML cannot
  predict off Apple hardware, so the interface is what can be checked here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mobilepeft.export.bundle import Bundle, read_bundle


@dataclass(frozen=True)
class Check:
    section: str
    passed: bool
    detail: str
    numbers: dict[str, Any]


def check_bundle(path: str | Path) -> tuple[Bundle, list[Check]]:
    """Open the bundle with a full hash of every file (a mismatch raises), then run each section's check."""
    bundle = read_bundle(path, verify="full")
    checks = [Check("files", True, f"manifest valid, {len(bundle.manifest['files'])} files match their SHA-256",
                    {"files": len(bundle.manifest["files"])})]
    for section, run in (("onnx_training", _check_onnx_training), ("executorch", _check_executorch),
                         ("coreml", _check_coreml)):
        if section in bundle.manifest:
            checks.append(run(bundle))
    return bundle, checks


def _check_onnx_training(bundle: Bundle) -> Check:
    from mobilepeft.export.ort.personalize import run_selftest

    r = run_selftest(bundle)
    return Check("onnx_training", r.passed,
                 f"self-test: PyTorch loss {r.reference_loss:.6f}, ORT eval loss {r.ort_eval_loss:.6f} (rel. diff "
                 f"{r.relative_error:.1e}, tolerance {r.rtol:.0e}); one train step: loss {r.train_step_loss:.6f}",
                 dict(asdict(r), passed=r.passed))


def _check_executorch(bundle: Bundle) -> Check:
    import torch

    from mobilepeft.export.executorch.exporter import executorch_methods

    section = bundle.section("executorch")
    methods = executorch_methods(bundle.file(section["file"]))
    problems, shapes = [], {}
    for name, signature in section["methods"].items():
        inputs = _sample_inputs(signature["input"])
        with torch.no_grad():
            out = methods[name](*inputs)
        expected = _shape(signature["output"][2])
        shapes[name] = list(out.shape)
        if list(out.shape) != expected:
            problems.append(f"{name} returned shape {list(out.shape)}, the manifest says {expected}")
        elif out.is_floating_point() and not bool(torch.isfinite(out).all()):
            problems.append(f"{name} returned NaN/inf")
    detail = "; ".join(problems) or (f"ExecuTorch runtime ran {', '.join(section['methods'])} with the manifest's "
                                     "shapes: outputs as declared, finite")
    return Check("executorch", not problems, detail, {"output_shapes": shapes})


def _check_coreml(bundle: Bundle) -> Check:
    from mobilepeft.export.coreml.exporter import io_agrees
    from mobilepeft.export.coreml.inspect import package_io

    section = bundle.section("coreml")
    problems = []
    for name in ("vision_encoder", "text_decoder"):
        declared = {k: v for k, v in section[name].items() if k != "file"}
        found = package_io(bundle.file(section[name]["file"]))
        if not io_agrees(found, declared):
            problems.append(f"{section[name]['file']} declares {found}, the manifest says {declared}")
    detail = "; ".join(problems) or "both packages declare the manifest's inputs, outputs and states"
    return Check("coreml", not problems, detail, {})


#: a flexible dimension ("T") is probed with this many tokens
PROBE_TOKENS = 2


def _shape(dims: list) -> list[int]:
    return [PROBE_TOKENS if d == "T" else int(d) for d in dims]


def _sample_inputs(flat: list) -> list:
    """Inputs for a method whose manifest signature is ``[name, dtype, shape, name, dtype, shape, ...]``:
    small random floats, and for integer inputs (token ids, cache positions) 0, 1, ..."""
    import torch

    generator = torch.Generator().manual_seed(0)
    out = []
    for _, dtype, dims in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
        shape = _shape(dims)
        if dtype == "int64":
            out.append(torch.arange(shape[-1], dtype=torch.long).expand(*shape).contiguous())
        else:
            out.append(0.02 * torch.randn(*shape, generator=generator))
    return out
