"""The apps and the native runner read only keys the bundle schema defines, and write only benchmark keys
the benchmark schema defines (issue 8).

Every manifest read in the Kotlin, Swift and C++ sources is a call ``<reader>.<fn>("<path>", ...)`` whose
path runs from the manifest root (``a.b[].c``: ``[]`` an array item, ``{}`` a member of an object with
free keys); every benchmark key is written with ``put("<key>", ...)`` in a file whose name says
``bench``. This test parses those calls
and resolves each path in ``mobilepeft/export/bundle.schema.json`` (``$ref`` followed), failing on any key the
schema does not know or whose type the reader cannot be given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE_SCHEMA = json.loads((ROOT / "mobilepeft" / "export" / "bundle.schema.json").read_text())
BENCH_SCHEMA = json.loads((ROOT / "mobilepeft" / "export" / "bench.schema.json").read_text())

SOURCES = {
    "kotlin": (ROOT / "android_demo" / "app", "*.kt"),
    "swift": (ROOT / "ios_demo", "*.swift"),
    "c++": (ROOT / "runner" / "src", "*.cpp"),
}
# Reader function -> the JSON types its value may have in the schema.
CONTAINER_READERS = {"strings", "ints", "longs", "doubles", "numbers", "count", "keys", "has"}
READERS = {
    "string": {"string"}, "int": {"integer"}, "long": {"integer"}, "integer": {"integer"},
    "double": {"number", "integer"}, "number": {"number", "integer"}, "bool": {"boolean"}, "boolean": {"boolean"},
    "strings": {"array"}, "ints": {"array"}, "longs": {"array"}, "doubles": {"array"}, "numbers": {"array"},
    "count": {"array"}, "keys": {"object"}, "has": None,
}
# List readers whose items must be numbers.
NUMBER_LISTS = {"ints": {"integer"}, "longs": {"integer"}, "doubles": {"number", "integer"},
                "numbers": {"number", "integer"}}
MANIFEST_READ = re.compile(r"\.(" + "|".join(READERS) + r")\(\s*\"([A-Za-z0-9_.\[\]{}]+)\"")
BENCH_WRITE = re.compile(r"\bput(_stats|Stats)?\(\s*(?:\w+\s*,\s*)?\"([a-z0-9_]+)\"")


def resolve_ref(node: dict, schema: dict = BUNDLE_SCHEMA) -> dict:
    """``node`` with its ``$ref`` chain followed."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def resolve(path: str, schema: dict = BUNDLE_SCHEMA, *, container: bool = False) -> dict:
    """The schema node ``path`` names; raises KeyError saying which segment is unknown.

    A trailing ``[]``/``{}`` names an item or member, or with ``container`` (readers of whole
    arrays and objects: ``count``, ``keys``, ``ints``, ...) the array or object itself."""

    def deref(node: dict) -> dict:
        return resolve_ref(node, schema)

    node = deref(schema)
    walked = []
    segments = path.split(".")
    for position, segment in enumerate(segments, 1):
        kind = segment[-2:] if segment.endswith(("[]", "{}")) else ""
        name = segment[: -len(kind)] if kind else segment
        walked.append(name)
        properties = node.get("properties", {})
        if name not in properties:
            raise KeyError(f"{'.'.join(walked)} is not in the schema")
        node = deref(properties[name])
        if container and position == len(segments):
            break
        if kind == "[]":
            if "items" not in node or not isinstance(node["items"], dict):
                raise KeyError(f"{'.'.join(walked)} is not an array of objects/values in the schema")
            node = deref(node["items"])
        elif kind == "{}":
            extra = node.get("additionalProperties")
            if not isinstance(extra, dict):
                raise KeyError(f"{'.'.join(walked)} has no free keys in the schema")
            node = deref(extra)
    return node


def _types(node: dict) -> set[str] | None:
    if "type" in node:
        return set(node["type"]) if isinstance(node["type"], list) else {node["type"]}
    if "const" in node or "enum" in node:
        values = node.get("enum", [node.get("const")])
        return {{str: "string", bool: "boolean", int: "integer", float: "number"}[type(v)] for v in values}
    return None


def check_manifest_reads(source: str) -> tuple[list[str], list[str]]:
    """(paths read, problems) of one source text."""
    paths, problems = [], []
    for fn, path in MANIFEST_READ.findall(source):
        paths.append(path)
        try:
            node = resolve(path, container=fn in CONTAINER_READERS)
        except KeyError as exc:
            problems.append(f"{fn}({path!r}): {exc.args[0]}")
            continue
        allowed, types = READERS[fn], _types(node)
        if allowed is not None and types is not None and not types & allowed:
            problems.append(f"{fn}({path!r}): the schema says {sorted(types)}")
        elif fn in NUMBER_LISTS and isinstance(node.get("items"), dict):
            items = _types(resolve_ref(node["items"]))
            if items is not None and not items & NUMBER_LISTS[fn]:
                problems.append(f"{fn}({path!r}): the schema's items are {sorted(items)}")
    return paths, problems


def check_bench_writes(source: str) -> tuple[list[str], list[str]]:
    # put_stats/putStats write key, key_min and key_max.
    keys = [k + suffix for stats, key in BENCH_WRITE.findall(source)
            for k, suffix in ([(key, "")] if not stats else [(key, ""), (key, "_min"), (key, "_max")])]
    known = BENCH_SCHEMA["properties"]
    return keys, [f"put({k!r}): not a benchmark key (mobilepeft/export/bench.schema.json)" for k in keys if k not in known]


def _sources(language: str) -> dict[Path, str]:
    folder, pattern = SOURCES[language]
    # Kotlin unit tests read fixture JSON through the same reader; they are not app code.
    return {p: p.read_text(encoding="utf-8") for p in sorted(folder.rglob(pattern)) if "src/test" not in p.as_posix()}


def test_checker_rejects_unknown_keys_and_wrong_types():
    _, problems = check_manifest_reads('m.string("executorch.file"); m.string("executorch.flie"); '
                                       'm.int("onnx_training.inputs[].name", i); m.keys("files{}"); '
                                       'm.ints("onnx_training.trainable[].shape", i); m.count("onnx_training.inputs[]"); '
                                       'm.int("onnx_training.trainable[].shape[]", i, 0); m.count("model.family"); '
                                       'm.ints("onnx_training.inference_outputs"); m.count("files{}")')
    assert problems == ["string('executorch.flie'): executorch.flie is not in the schema",
                        "int('onnx_training.inputs[].name'): the schema says ['string']",
                        "count('model.family'): the schema says ['string']",
                        "ints('onnx_training.inference_outputs'): the schema's items are ['string']",
                        "count('files{}'): the schema says ['object']"]
    assert resolve("files{}.sha256")["type"] == "string"
    assert resolve("coreml.text_decoder.inputs[].shape")["type"] == "array"  # through $ref
    _, problems = check_bench_writes('out.put("decode_tokens_per_s", x); put("tokens_per_second", y); '
                                     'o.putStats("train_step_ms", s); put_stats(out, "peak_rss_mb", v)')
    assert problems == ["put('tokens_per_second'): not a benchmark key (mobilepeft/export/bench.schema.json)",
                        "put('peak_rss_mb_min'): not a benchmark key (mobilepeft/export/bench.schema.json)",
                        "put('peak_rss_mb_max'): not a benchmark key (mobilepeft/export/bench.schema.json)"]


@pytest.mark.parametrize("language", list(SOURCES))
def test_every_manifest_key_the_sources_read_is_in_the_schema(language):
    sources = _sources(language)
    assert sources, f"no {language} sources under {SOURCES[language][0]}"
    paths, problems = set(), []
    for file, text in sources.items():
        found, bad = check_manifest_reads(text)
        paths.update(found)
        problems += [f"{file.relative_to(ROOT)}: {p}" for p in bad]
    assert not problems, "\n".join(problems)
    # The sources really read the manifest this way (the parse is not vacuous).
    assert len(paths) >= 10 and {"tokenizer.file", "image_preprocessing.size"} <= paths, sorted(paths)


@pytest.mark.parametrize("language", list(SOURCES))
def test_every_benchmark_key_the_sources_write_is_in_the_bench_schema(language):
    keys, problems = set(), []
    for file, text in _sources(language).items():
        if "bench" not in file.name.lower():
            continue
        found, bad = check_bench_writes(text)
        keys.update(found)
        problems += [f"{file.relative_to(ROOT)}: {p}" for p in bad]
    assert not problems, "\n".join(problems)
    assert {"decode_tokens_per_s", "threads", "backend", "device"} <= keys, sorted(keys)
