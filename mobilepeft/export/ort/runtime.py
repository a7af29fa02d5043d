"""Thin wrappers over ``onnxruntime.training.api``: the calls a phone app makes, named as it names them.

``OrtTrainer`` is the desktop stand-in for Android's ``OrtTrainingSession`` / iOS's
``ORTTrainingSession``: load a checkpoint, ``train_step`` (trainStep + optimizerStep +
lazyResetGrad), ``eval_loss`` (evalStep), ``save_checkpoint``, ``export_inference``
(exportModelForInference). Every file error names the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from mobilepeft.errors import UserError

onnxruntime.set_default_logger_severity(3)  # ORT logs every graph transformer at INFO otherwise


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    """ORT session options for a phone-sized process. Weight prepacking stays off: MLAS would keep a
    second, repacked copy of every frozen weight (measured at the 1.7B shape: the CLIP tower's 1.2 GB
    took 2.3 GB and stayed resident after its session was freed), which a phone cannot afford."""
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def load_checkpoint_state(path: Path):
    from onnxruntime.training.api import CheckpointState

    if not path.is_file():
        raise UserError("ORT checkpoint not found", path=path)
    try:
        return CheckpointState.load_checkpoint(str(path))
    except Exception as exc:  # ORT raises RuntimeError/Fail subclasses with flatbuffer messages
        raise UserError(f"cannot read the ORT checkpoint ({type(exc).__name__}: {str(exc).strip()[:200]})",
                        path=path, hint="the file is corrupt or not an ORT training checkpoint; copy it again") from exc


def trainable_arrays(checkpoint: Path, section: dict[str, Any]) -> dict[str, np.ndarray]:
    """The checkpoint's trainable tensors by graph name, checked against the bundle's list (names
    and shapes): a checkpoint from another bundle is refused here, by name, before ORT sees it."""
    state = load_checkpoint_state(checkpoint)
    arrays = {}
    for entry in section["trainable"]:
        try:
            value = np.array(state.parameters[entry["name"]].data)
        except (KeyError, RuntimeError) as exc:
            raise UserError(f"the checkpoint has no parameter {entry['name']!r}: it was not trained from this bundle",
                            path=checkpoint, hint="pass the bundle the checkpoint's artifacts came from") from exc
        if list(value.shape) != entry["shape"]:
            raise UserError(f"parameter {entry['name']!r} has shape {list(value.shape)}, the bundle says "
                            f"{entry['shape']}", path=checkpoint, hint="pass the bundle the checkpoint came from")
        arrays[entry["name"]] = value
    return arrays


class OrtTrainer:
    """One ORT training session over the bundle's artifacts (optionally starting from another checkpoint)."""

    def __init__(self, training_model: Path, eval_model: Path, optimizer_model: Path, checkpoint: Path,
                 *, threads: int | None = None) -> None:
        from onnxruntime.training.api import Module, Optimizer

        self.state = load_checkpoint_state(Path(checkpoint))
        options = session_options(threads)
        # Absolute: ORT reads the eval model lazily, when export_inference runs from its scratch folder.
        training_model, eval_model, optimizer_model = (Path(f).resolve() for f in
                                                       (training_model, eval_model, optimizer_model))
        try:
            self.module = Module(str(training_model), self.state, str(eval_model), session_options=options)
            self.optimizer = Optimizer(str(optimizer_model), self.module)
        except Exception as exc:
            raise UserError(f"ONNX Runtime cannot load the training artifacts ({str(exc).strip()[:300]})",
                            path=Path(training_model).parent, hint="re-export the bundle") from exc
        self.eval_model = Path(eval_model)
        self.input_names = list(self.module.input_names())
        self.loss_output = self.module.output_names()[0]

    def _feeds(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in batch]
        if missing:
            raise ValueError(f"batch lacks graph inputs {missing}")
        return [batch[n] for n in self.input_names]

    def eval_loss(self, batch: dict[str, np.ndarray]) -> float:
        self.module.eval()
        return float(np.asarray(self.module(*self._feeds(batch))))

    def train_step(self, batch: dict[str, np.ndarray]) -> float:
        self.module.train()
        loss = float(np.asarray(self.module(*self._feeds(batch))))
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return loss

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.set_learning_rate(lr)

    def save_checkpoint(self, path: Path) -> None:
        """Write to a temporary name, then rename: a crash mid-write never leaves half a checkpoint.

        Over 2 GB, ORT puts the tensors in ``<checkpoint>.data`` beside it; that file moves first.
        """
        from onnxruntime.training.api import CheckpointState

        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        data, tmp_data = Path(f"{path}.data"), Path(f"{tmp}.data")
        try:
            CheckpointState.save_checkpoint(self.state, str(tmp))
            if tmp_data.exists():
                os.replace(tmp_data, data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_data.unlink(missing_ok=True)

    def export_inference(self, path: Path, outputs: list[str]) -> None:
        """``exportModelForInference`` into a scratch folder beside ``path``, then moved into place (its
        external data first, the model last). Over 2 GB ORT writes the weights beside the model and
        takes only a relative path for that, so the export runs from inside the scratch folder."""
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            with contextlib.chdir(scratch):
                self.module.export_model_for_inferencing(path.name, outputs)
            for produced in sorted(scratch.iterdir(), key=lambda f: f.name == path.name):
                os.replace(produced, path.parent / produced.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def inference_session(file: Path, threads: int | None, what: str) -> onnxruntime.InferenceSession:
    """An ORT CPU inference session over one of the bundle's frozen graphs; errors name the file."""
    try:
        return onnxruntime.InferenceSession(str(file), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load the {what} ({str(exc).strip()[:200]})", path=file,
                        hint="re-export the bundle") from exc


class VisionRunner:
    """The frozen vision encoder as an ONNX inference session (pixels -> image tokens)."""

    def __init__(self, file: Path, *, threads: int | None = None) -> None:
        self.session = inference_session(file, threads, "vision encoder")
        self.input = self.session.get_inputs()[0].name

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]


class PrefixRunner:
    """A split bundle's frozen decoder layers (``decoder_prefix.onnx``): sample inputs -> ``hidden_states``,
    the training graph's input. Frozen, so each sample needs it once, not once per step."""

    def __init__(self, file: Path, *, threads: int | None = None) -> None:
        self.session = inference_session(file, threads, "decoder prefix")
        self.inputs = [i.name for i in self.session.get_inputs()]

    def hidden_states(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {n: batch[n] for n in self.inputs})[0]
