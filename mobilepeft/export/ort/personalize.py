"""``mobilepeft personalize``: the phone's training loop, replayed on the desktop with the same runtime.

Only bundle files are used, through the calls the apps make: images go through the bundle's
vision encoder (ONNX), conversations through the bundle's tokenizer and template, and training
through ``onnxruntime.training.api`` on the bundle's artifacts. What comes out is what a phone
would keep: the updated checkpoint and an inference model with the trained adapter baked in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilepeft.data.llava import load_llava
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle, read_bundle
from mobilepeft.export.numerics import relative_error
from mobilepeft.export.ort.batch import EncodedSample, encode_sample, stack_batch
from mobilepeft.export.ort.memory import check_memory
from mobilepeft.export.ort.runtime import OrtTrainer, PrefixRunner, VisionRunner, trainable_arrays
from mobilepeft.export.ort.training_graph import HIDDEN_STATES, LABELS
from mobilepeft.io import write_json
from mobilepeft.models.tokenizer import IGNORE_INDEX, Tokenizer
from mobilepeft.outputs import atomic_output

SECTION = "onnx_training"


def open_trainer(bundle: Bundle, checkpoint: Path | None = None, *, threads: int | None = None) -> OrtTrainer:
    """An ORT training session on the bundle's artifacts, from its checkpoint or another one."""
    sec = bundle.section(SECTION)
    return OrtTrainer(bundle.file(sec["training_model"]), bundle.file(sec["eval_model"]),
                      bundle.file(sec["optimizer_model"]), checkpoint or bundle.file(sec["checkpoint"]),
                      threads=threads)


def selftest_batch(bundle: Bundle) -> tuple[dict[str, np.ndarray], float]:
    """The exporter's recorded batch and the PyTorch loss it measured on it."""
    sec = bundle.section(SECTION)
    file = bundle.file(sec["selftest"]["file"])
    try:
        with np.load(file) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the self-test batch ({exc})", path=file) from exc
    reference = float(arrays.pop("reference_loss"))
    return arrays, reference


@dataclass
class SelftestResult:
    reference_loss: float
    ort_eval_loss: float
    relative_error: float
    rtol: float
    train_step_loss: float

    @property
    def passed(self) -> bool:
        return bool(self.relative_error <= self.rtol and np.isfinite(self.train_step_loss))


def run_selftest(bundle: Bundle, *, threads: int | None = None) -> SelftestResult:
    """ORT's eval loss on ``selftest.npz`` vs the PyTorch loss recorded at export, then one train step."""
    batch, reference = selftest_batch(bundle)
    trainer = open_trainer(bundle, threads=threads)
    loss = trainer.eval_loss(batch)
    step = trainer.train_step(batch)
    rtol = bundle.section(SECTION)["selftest"]["rtol"]
    return SelftestResult(reference, loss, relative_error(loss, reference), rtol, step)


class BatchBuilder:
    """Raw LLaVA samples -> graph inputs, using only the bundle (tokenizer, vision encoder, manifest).

    The frozen graphs (vision encoder; a split bundle's decoder prefix) run once per photo / row:
    :meth:`prepare` computes everything the rows need and frees those sessions, so a phone holds
    them and the training graph one after the other, never together.
    """

    def __init__(self, bundle: Bundle, *, threads: int | None = None) -> None:
        self.bundle = bundle
        self.sec = bundle.section(SECTION)
        self.tokenizer = Tokenizer(bundle.path)
        self.vision: VisionRunner | None = VisionRunner(bundle.file(self.sec["vision_encoder"]["file"]), threads=threads)
        self.image_shape = tuple(self.sec["vision_encoder"]["output"]["shape"][1:])
        self._encoded: dict[Path, np.ndarray] = {}
        split = self.sec.get("split")
        self.split = split is not None
        self.prefix = PrefixRunner(bundle.file(split["file"]), threads=threads) if split else None
        self._hidden: dict[int, tuple[EncodedSample, np.ndarray]] = {}  # id(row) -> (row, its hidden states)

    def samples(self, data: str | Path, image_folder: str | Path | None) -> tuple[list[EncodedSample], Path]:
        folder = Path(image_folder) if image_folder is not None else Path(data).parent
        conversations, _ = load_llava(data, folder)
        if not conversations:
            raise UserError("no samples in the data file", path=data)
        model = self.bundle.manifest["model"]
        rows = [encode_sample(c, self.tokenizer, num_image_tokens=model["num_image_tokens"],
                              seq_len=self.bundle.manifest["max_seq_len"], pad_id=self.tokenizer.pad_id)
                for c in conversations]
        return rows, folder

    def image_tokens(self, row: EncodedSample, folder: Path) -> np.ndarray:
        """The vision encoder's output for the row's image (each photo is encoded once), zeros without one."""
        if row.image is None:
            return np.zeros(self.image_shape, dtype=np.float32)
        path = folder / row.image
        if path not in self._encoded:
            from PIL import Image

            from mobilepeft.models.image_processing import preprocess_images

            with Image.open(path) as image:
                pixels = preprocess_images([image], self.bundle.manifest["image_preprocessing"]["size"]).numpy()
            self._encoded[path] = self._live(self.vision, "vision encoder").encode(pixels)[0]
        return self._encoded[path]

    def hidden_states(self, row: EncodedSample, folder: Path) -> np.ndarray:
        """A split bundle's frozen layers' output for the row (computed once per row object)."""
        if id(row) not in self._hidden:
            single = stack_batch([row], self.sec["image_input"], self.image_tokens(row, folder)[None])
            self._hidden[id(row)] = (row, self._live(self.prefix, "decoder prefix").hidden_states(single)[0])
        return self._hidden[id(row)][1]

    def prepare(self, *sets: tuple[Sequence[EncodedSample], Path]) -> None:
        """Run the frozen graphs for every ``(rows, folder)`` set now, one graph at a time, and free each
        when it is done: every photo through the vision encoder, then (split bundle) every row through the
        decoder prefix. Later batches come from what was kept (image tokens, or hidden states)."""
        for rows, folder in sets:
            for row in rows:
                self.image_tokens(row, folder)
        self.vision = None
        if self.split:
            for rows, folder in sets:
                for row in rows:
                    self.hidden_states(row, folder)
            self.prefix, self._encoded = None, {}

    def batch(self, rows: Sequence[EncodedSample], folder: Path) -> dict[str, np.ndarray]:
        """The training graph's inputs for ``rows``; in a split bundle the frozen layers' output instead
        of ids and image tokens (the rows of one ``samples`` call are reused across steps)."""
        if not self.split:
            images = np.stack([self.image_tokens(r, folder) for r in rows])
            return stack_batch(rows, self.sec["image_input"], images)
        return {HIDDEN_STATES: np.stack([self.hidden_states(r, folder) for r in rows]),
                "attention_mask": np.stack([r.attention_mask for r in rows]),
                LABELS: np.concatenate([r.labels for r in rows])}

    @staticmethod
    def _live(session, what: str):
        if session is None:
            raise RuntimeError(f"the {what} was released before every row was prepared")
        return session


def mean_loss(trainer: OrtTrainer, builder: BatchBuilder, rows: Sequence[EncodedSample], folder: Path,
              batch_size: int) -> float:
    """Token-weighted mean loss over ``rows`` (equal to one big batch's loss, whatever the batching)."""
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        count = int(sum((r.labels != IGNORE_INDEX).sum() for r in chunk))
        total += trainer.eval_loss(builder.batch(chunk, folder)) * count
        tokens += count
    return total / max(tokens, 1)


@dataclass
class PersonalizeReport:
    steps: int
    batch_size: int
    learning_rate: float
    samples: int
    eval_samples: int
    eval_loss_before: float
    eval_loss_after: float
    train_losses: list[float]
    train_step_ms_median: float
    inference_model_check: float  # rel. diff of the exported inference model's loss vs ORT eval
    seconds: float


def personalize(bundle_dir: str | Path, data: str | Path, out_dir: str | Path, *, image_folder: str | Path | None = None,
                eval_data: str | Path | None = None, eval_image_folder: str | Path | None = None,
                steps: int = 20, lr: float | None = None, batch_size: int = 4, seed: int = 0,
                checkpoint: str | Path | None = None, threads: int | None = None,
                memory_limit_mib: float | None = None, echo: Callable[[str], None] = print) -> PersonalizeReport:
    """Train the bundle's adapter on ``data`` with ORT and write ``out_dir``:

    ``checkpoint`` (the updated ORT checkpoint), ``inference_model.onnx`` (logits model with the
    trained weights, from ``export_model_for_inferencing``) and ``personalize.json`` (this report).
    ``checkpoint`` continues from an earlier session's checkpoint instead of the bundle's, as a
    phone does from one day to the next. ``memory_limit_mib``: refuse, before anything loads, a session
    whose estimated peak (:mod:`.memory`) is larger, as an app does with the memory it may use.
    """
    if steps < 1 or batch_size < 1:
        raise UserError("--steps and --batch-size must be at least 1", field="steps")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"learning rate must be positive, got {lr}", field="lr")
    started = time.perf_counter()
    bundle = read_bundle(bundle_dir)
    sec = bundle.section(SECTION)
    estimate = check_memory(bundle, batch_size, memory_limit_mib)
    echo("estimated peak: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} MiB" for k, v in estimate.items()))
    if checkpoint is not None:
        trainable_arrays(Path(checkpoint), sec)
    lr = lr or sec["optimizer"]["default_learning_rate"]
    builder = BatchBuilder(bundle, threads=threads)
    rows, folder = builder.samples(data, image_folder)
    if eval_data is not None:
        eval_rows, eval_folder = builder.samples(eval_data, eval_image_folder)
    else:
        eval_rows, eval_folder = rows, folder
    builder.prepare((rows, folder), (eval_rows, eval_folder))  # frozen graphs freed: never beside the training session
    trainer = open_trainer(bundle, Path(checkpoint) if checkpoint else None, threads=threads)
    trainer.set_learning_rate(lr)

    before = mean_loss(trainer, builder, eval_rows, eval_folder, batch_size)
    echo(f"eval loss before: {before:.4f} ({len(eval_rows)} samples)")
    order = _batches(len(rows), batch_size, steps, seed)
    losses, times = [], []
    from tqdm import tqdm

    for indices in tqdm(order, desc="personalize", unit="step", disable=None):
        batch = builder.batch([rows[i] for i in indices], folder)
        t0 = time.perf_counter()
        losses.append(trainer.train_step(batch))
        times.append(time.perf_counter() - t0)
    after = mean_loss(trainer, builder, eval_rows, eval_folder, batch_size)
    echo(f"eval loss after {steps} steps: {after:.4f}")

    with atomic_output(out_dir, "personalization") as tmp:
        trainer.save_checkpoint(tmp / "checkpoint")
        inference = tmp / "inference_model.onnx"
        trainer.export_inference(inference, sec["inference_outputs"])
        check = _check_inference_model(inference, trainer, builder.batch(eval_rows[:batch_size], eval_folder))
        report = PersonalizeReport(steps, batch_size, lr, len(rows), len(eval_rows), before, after, losses,
                                   float(np.median(times) * 1000), check, time.perf_counter() - started)
        write_json(tmp / "personalize.json", asdict(report))
    return report


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Epoch-wise shuffled index batches, as many as ``steps`` (samples repeat when data is small)."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def _check_inference_model(path: Path, trainer: OrtTrainer, batch: dict[str, np.ndarray]) -> float:
    """Loss of the exported inference model (plain ORT session) vs the training session's eval loss."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    logits = session.run(None, feeds)[0]
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    labels = batch["labels"]
    keep = labels != IGNORE_INDEX
    shifted = flat[keep] - flat[keep].max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-logp[np.arange(keep.sum()), labels[keep]].mean())
    return relative_error(loss, trainer.eval_loss(batch))

