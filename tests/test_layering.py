"""The layers of the package, checked from the source's imports (top-level and function-local alike).

Data flows one way: models -> adapters/data -> train/schedule -> export -> apps. A lower layer that
imported a higher one would drag the deployment runtimes (ExecuTorch, ONNX Runtime, coremltools)
into training, or the training side into a model reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mobilepeft"

# module prefix -> module prefixes it must never import
FORBIDDEN = {
    "mobilepeft.models": ["mobilepeft.data", "mobilepeft.adapters", "mobilepeft.train", "mobilepeft.schedule",
                          "mobilepeft.evaluation", "mobilepeft.export", "mobilepeft.presets", "mobilepeft.cli"],
    "mobilepeft.adapters": ["mobilepeft.data", "mobilepeft.train", "mobilepeft.schedule", "mobilepeft.export"],
    "mobilepeft.data": ["mobilepeft.adapters", "mobilepeft.train", "mobilepeft.schedule", "mobilepeft.export"],
    "mobilepeft.export.graphs": ["mobilepeft.export.ort", "mobilepeft.export.executorch",
                                 "mobilepeft.export.coreml", "mobilepeft.export.cli"],
    "mobilepeft.export.ort": ["mobilepeft.export.executorch", "mobilepeft.export.coreml", "mobilepeft.export.cli"],
    "mobilepeft.export.executorch": ["mobilepeft.export.ort", "mobilepeft.export.coreml", "mobilepeft.export.cli"],
    "mobilepeft.export.coreml": ["mobilepeft.export.ort", "mobilepeft.export.executorch", "mobilepeft.export.cli"],
}
# The core never imports the deployment side; only the entry point does.
CORE_EXEMPT = {"mobilepeft.__main__"}


def _modules() -> dict[str, set[str]]:
    imports: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        imports[name] = {m for m in found if m.startswith("mobilepeft")}
    return imports


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_package_is_read():
    modules = _modules()
    assert "mobilepeft.export.ort.exporter" in modules and "mobilepeft.models.mobilevlm" in modules
    assert "mobilepeft.export.ort.exporter" in modules["mobilepeft.export.cli"]


def test_core_never_imports_the_deployment_side():
    offenders = sorted(f"{name} imports {target}" for name, targets in _modules().items()
                       if not _under(name, "mobilepeft.export") and name not in CORE_EXEMPT
                       for target in targets if _under(target, "mobilepeft.export"))
    assert offenders == []


def test_no_layer_imports_upward():
    offenders = sorted(f"{name} imports {target}" for name, targets in _modules().items()
                       for layer, banned in FORBIDDEN.items() if _under(name, layer)
                       for target in targets for bad in banned if _under(target, bad))
    assert offenders == []


def test_python_m_and_the_script_are_the_same_cli():
    import tomllib

    script = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]["mobilepeft"]
    module, function = script.split(":")
    assert module in _modules()["mobilepeft.__main__"]
    main_source = (PACKAGE / "__main__.py").read_text()
    assert f"from {module} import {function}" in main_source


def test_the_readme_layout_names_files_that_exist():
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("Where each capability lives"):readme.index("Docs: [docs/training.md]")]
    paths = re.findall(r"`([\w./<>-]+\.(?:py|cpp|kt|swift))`", table)
    assert len(paths) >= 15
    missing = [p for p in paths if "<" not in p and not (PACKAGE.parent / p).is_file()]
    assert missing == []
