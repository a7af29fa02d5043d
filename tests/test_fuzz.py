"""Bad inputs, generated systematically, through the real CLI (in-process).

Every case must end the way a user can act on: a non-zero exit status, no traceback, a message
that names the file or the field, and nothing changed on disk (inputs byte-identical, no output
directory). Where a mutated value is in fact valid (a config field mobilepeft never reads, an
optional LLaVA field), the command must succeed instead; it may never end in an unexpected error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import typing
from dataclasses import fields
from pathlib import Path

import pytest

import mobilepeft.export.cli  # noqa: F401  (registers the deployment commands on the app)
from mobilepeft.cli import app, run
from mobilepeft.errors import UserError
from mobilepeft.train.config import TrainConfig

WRONG = ["x", 4.5, -1, None, [], "<missing>"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny checkpoint, a dataset, a trained adapter and an ORT bundle, all as a user has them."""
    from mobilepeft.data.synth import write_synthetic_dataset
    from mobilepeft.export.ort.exporter import export_onnx_training
    from mobilepeft.presets import write_preset
    from mobilepeft.train.config import TrainConfig
    from mobilepeft.train.trainer import Trainer

    root = tmp_path_factory.mktemp("fuzz")
    ckpt = write_preset("tiny", root / "ckpt")
    write_synthetic_dataset(root / "data", n_train=8, n_val=2)
    cfg = TrainConfig.from_flat(dict(model=str(ckpt), data=str(root / "data/train.json"), output_dir=str(root / "run"),
                      max_steps=2, batch_size=2, save_every=1, schedule="hydra", probe_steps=1, rank=4))
    cfg.validate()
    Trainer(cfg, progress=False).run()
    export_onnx_training(ckpt, root / "run/adapter", root / "ort", echo=lambda _: None)
    return root


class Outcome(typing.NamedTuple):
    code: int
    out: str
    err: str


def cli(capsys, *args) -> Outcome:
    capsys.readouterr()
    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "cases" not in p.parts}


def assert_clear(result: Outcome, *names: str) -> None:
    assert result.code == 2, result
    assert "Traceback" not in result.err + result.out and "unexpected" not in result.err, result.err
    assert any(n in result.err for n in names), (names, result.err)


def _checkpoint_with(world: Path, case: Path, field: str, value) -> Path:
    """The tiny checkpoint with one config.json field mutated (weights and tokenizer linked, not copied)."""
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    for item in (world / "ckpt").iterdir():
        if item.name != "config.json":
            (case / item.name).symlink_to(item)
    config = json.loads((world / "ckpt/config.json").read_text())
    if value == "<missing>":
        config.pop(field)
    else:
        config[field] = value
    (case / "config.json").write_text(json.dumps(config))
    return case


def test_every_config_field_wrong(world, capsys):
    """Each config.json field set to each wrong type or value, or missing: refused naming the field,
    or, where the value is still valid (rope_theta 4.5, a null token id) or the field is one
    mobilepeft keeps verbatim and never reads, the model loads and answers."""
    before = snapshot(world)
    fields_in_file = list(json.loads((world / "ckpt/config.json").read_text()))
    tried = refused = 0
    for field in fields_in_file:
        for value in WRONG:
            case = _checkpoint_with(world, world / "cases" / "ckpt", field, value)
            result = cli(capsys, "eval", "--model", case, "--data", world / "data/val.json", "--limit", 1,
                         "--max-new-tokens", 1)
            tried += 1
            assert "Traceback" not in result.err and result.code in (0, 2), (field, value, result)
            if result.code == 2:
                refused += 1
                # a value that is valid on its own but disagrees with the weights is named by tensor
                named = field in result.err or "config.json implies" in result.err
                assert "config.json" in result.err and named, (field, value, result.err)
    assert snapshot(world) == before
    print(f"config.json: {tried} bad values, {refused} refused with the field named, the rest unused fields")
    assert refused >= 100


def test_llava_fields_wrong(world, capsys):
    """Every LLaVA sample field missing or of the wrong type: refused naming the file and the
    sample, and no run directory appears."""
    before = snapshot(world)
    good = json.loads((world / "data/train.json").read_text())[0]
    mutations: list[tuple[str, typing.Callable[[dict], None]]] = []
    for key in ("id", "image", "conversations"):
        mutations.append((f"{key} missing", lambda s, k=key: s.pop(k)))
        for wrong in (5, None, [], {"a": 1}):
            mutations.append((f"{key}={wrong!r}", lambda s, k=key, w=wrong: s.__setitem__(k, w)))
    for turn in (0, 1):
        for key in ("from", "value"):
            mutations.append((f"turn {turn} {key} missing", lambda s, t=turn, k=key: s["conversations"][t].pop(k)))
            for wrong in (5, None, ["a"]):
                mutations.append((f"turn {turn} {key}={wrong!r}",
                                  lambda s, t=turn, k=key, w=wrong: s["conversations"][t].__setitem__(k, w)))
    mutations += [
        ("roles swapped", lambda s: s["conversations"].reverse()),
        ("one turn only", lambda s: s["conversations"].pop()),
        ("no turns", lambda s: s.__setitem__("conversations", [])),
        ("image file missing", lambda s: s.__setitem__("image", "images/none.png")),
        ("image is not an image", lambda s: s.__setitem__("image", "train.json")),
        ("absolute image path outside", lambda s: s.__setitem__("image", "/etc/passwd")),
    ]
    tried = refused = 0
    for label, mutate in mutations:
        sample = json.loads(json.dumps(good))
        mutate(sample)
        data = world / "cases" / "bad.json"
        data.parent.mkdir(exist_ok=True)
        data.write_text(json.dumps([sample]))
        out = world / "cases" / "out"
        shutil.rmtree(out, ignore_errors=True)
        result = cli(capsys, "train", "--model", world / "ckpt", "--data", data, "--image-folder", world / "data",
                     "--output-dir", out, "--max-steps", 1, "--batch-size", 1, "--save-every", 0)
        tried += 1
        assert "Traceback" not in result.err and result.code in (0, 2), (label, result)
        if result.code == 2:
            refused += 1
            assert "bad.json" in result.err or "none.png" in result.err or "passwd" in result.err, (label, result.err)
            assert not out.exists(), label
    assert snapshot(world) == before
    print(f"LLaVA: {tried} mutations, {refused} refused")
    assert refused >= len(mutations) - 4  # the id is optional; a few mutations leave a valid sample


def test_every_bundle_file_truncated_flipped_missing(world, capsys):
    bundle = world / "ort"
    manifest = json.loads((bundle / "manifest.json").read_text())
    tried = 0
    for name in [*manifest["files"], "manifest.json"]:
        file = bundle / name
        original = file.read_bytes()
        for how in ("truncated", "flipped", "missing"):
            if how == "flipped" and not original:
                continue
            _damage(file, original, how)
            try:
                result = cli(capsys, "bundle", "check", bundle)
                tried += 1
                assert_clear(result, name)
            finally:
                file.write_bytes(original)
    print(f"bundle: {tried} damaged files refused by name")
    assert cli(capsys, "bundle", "check", bundle).code == 0


def test_verification_stamp_skips_unchanged_files_and_catches_later_tampering(world, tmp_path, monkeypatch):
    import mobilepeft.export.bundle as bundle_mod

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hashed = []
    real = bundle_mod.file_record
    monkeypatch.setattr(bundle_mod, "file_record", lambda p: hashed.append(p.name) or real(p))
    copy = tmp_path / "ort"
    shutil.copytree(world / "ort", copy)
    hour_ago = time.time() - 3600  # a bundle copied in earlier: older than the stamp's 2 s settling time
    for file in copy.rglob("*"):
        os.utime(file, (hour_ago, hour_ago))
    files = json.loads((copy / "manifest.json").read_text())["files"]
    bundle_mod.read_bundle(copy)
    assert len(hashed) == len(files) and bundle_mod.stamp_file(copy).is_file()
    hashed.clear()
    bundle_mod.read_bundle(copy)
    assert hashed == []  # unchanged since the stamp: nothing re-hashed
    target = copy / "checkpoint"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))  # same size, new mtime/ctime
    with pytest.raises(UserError, match="SHA-256"):
        bundle_mod.read_bundle(copy)
    assert hashed == ["checkpoint"]
    with pytest.raises(UserError, match="SHA-256"):
        bundle_mod.read_bundle(copy, verify="full")


def _damage(file: Path, original: bytes, how: str) -> None:
    mid = len(original) // 2
    if how == "truncated":
        file.write_bytes(original[:mid])
    elif how == "flipped":  # same size, one byte changed: only the SHA-256 can tell
        file.write_bytes(original[:mid] + bytes([original[mid] ^ 0xFF]) + original[mid + 1:])
    else:
        file.unlink()


def _commands():
    """(command path, callback) of every CLI command."""
    def walk(typer_app, prefix):
        for command in typer_app.registered_commands:
            yield (*prefix, command.name), command.callback
        for group in typer_app.registered_groups:
            yield from walk(group.typer_instance, (*prefix, group.name))
    return list(walk(app, ()))


def _numeric_options(callback) -> list[tuple[str, dict]]:
    """(option name, declared range) of every int or float option of a command: typer's min for most commands,
    TrainConfig's field metadata for train (where every setting is declared)."""
    import typer

    train_fields = {f.name: f.metadata for f in fields(TrainConfig)}
    out = []
    for name, hint in typing.get_type_hints(callback, include_extras=True).items():
        if not hasattr(hint, "__metadata__"):  # the context, the return type
            continue
        base = [a for a in typing.get_args(typing.get_args(hint)[0]) if a is not type(None)] or \
            [typing.get_args(hint)[0]]
        if base[0] not in (int, float):
            continue
        info = next(m for m in hint.__metadata__ if isinstance(m, typer.models.ParameterInfo))
        declared = train_fields[name] if callback.__name__ == "train_cmd" else {
            k: v for k, v in (("min", info.min), ("max", info.max)) if v is not None}
        out.append((name, declared))
    return out


def _valid(value: float, declared: dict) -> bool:
    if math.isnan(value) or not declared:
        return False
    low, high = declared.get("min"), declared.get("max")
    if low is not None and (value <= low if declared.get("min_open") else value < low):
        return False
    return not (high is not None and (value >= high if declared.get("max_open") else value > high))


def test_every_numeric_flag_at_zero_negative_nan(world, capsys):
    out = world / "cases" / "numeric-out"
    base = {
        ("train",): ["--model", world / "ckpt", "--data", world / "data/train.json", "--output-dir", out],
        ("eval",): ["--model", world / "ckpt", "--data", world / "data/val.json"],
        ("init-model",): ["--output-dir", out], ("data", "synth"): ["--output-dir", out],
        ("demo",): ["--output-dir", out],
        ("export", "onnx-training"): ["--model", world / "ckpt", "--adapter", world / "run/adapter", "--output-dir", out],
        ("export", "executorch"): ["--model", world / "ckpt", "--output-dir", out],
        ("export", "coreml"): ["--model", world / "ckpt", "--output-dir", out],
        ("generate",): ["--bundle", world / "ort", "--prompt", "hi"], ("bench",): [world / "ort"],
        ("personalize",): ["--bundle", world / "ort", "--data", world / "data/train.json", "--output-dir", out],
    }
    before = snapshot(world)
    tried = 0
    for path, callback in _commands():
        for name, declared in _numeric_options(callback):
            flag = "--" + name.replace("_", "-")
            for value in (0, -1, math.nan):
                if _valid(value, declared):
                    continue
                assert path in base, f"{' '.join(path)} {flag}: no base arguments to try it with"
                text = "nan" if math.isnan(value) else str(value)
                result = cli(capsys, *path, *base[path], flag, text)
                tried += 1
                assert_clear(result, flag, f"'{name}'")
                assert not out.exists(), (path, flag, text)
    assert snapshot(world) == before
    print(f"numeric flags: {tried} out-of-range values refused by name")
    assert tried >= 60
