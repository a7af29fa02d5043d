"""Where a run's numbers go: ``metrics.jsonl`` always, and the tracker ``--report-to`` names.

The trainer hands each record to one :class:`MetricsSink` and does not know where it ends up,
so adding a tracker touches this module only. Only rank 0 opens real sinks (:func:`open_sinks`):
the numbers are the same on every rank (losses are reduced before they are logged), and one
writer per file keeps the files whole.

A record is ``{"step": N, name: number, ...}``: a training step's ``loss``, ``lr``,
``grad_norm``, ``samples_per_s`` (and ``rank_moves`` after a reallocation), or an evaluation's
``eval_loss`` and ``eval_accuracy``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mobilepeft.errors import UserError
from mobilepeft.io import write_text


class MetricsSink(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """Store one record (see the module docstring); ``record["step"]`` is its optimizer step."""

    def log_ranks(self, step: int, ranks: dict[str, int]) -> None:
        """Store the rank every scheduled branch has from ``step`` on (HyDRA's allocation)."""

    def close(self) -> None:
        """Flush and release what the sink holds open."""


class JsonlSink:
    """``metrics.jsonl``: one JSON line per record. The file is opened per record, so a crash
    loses nothing already logged; ranks are not written here (``rank_history.json`` has them
    with the moves that changed them)."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        if start:
            _truncate(path, start)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def log_ranks(self, step: int, ranks: dict[str, int]) -> None:
        """Not recorded: see the class docstring."""

    def close(self) -> None:
        """Nothing is held open between records."""


class TensorBoardSink:
    """TensorBoard scalars in ``log_dir``: ``train/loss``, ``train/lr``, ``train/grad_norm``,
    ``train/samples_per_second``, ``eval/loss``, ``eval/accuracy``, and ``hydra/rank/<module>``
    (``hydra/rank_moves`` when a reallocation moved ranks).

    A resumed run (``start`` > 0) writes a new event file that tells TensorBoard to hide what
    the interrupted run logged after step ``start``, as ``metrics.jsonl`` is truncated there;
    the curves then continue as if the run had never stopped.
    """

    _TAGS = {"samples_per_s": "train/samples_per_second", "rank_moves": "hydra/rank_moves"}

    def __init__(self, log_dir: Path, start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start + 1 if start else None)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(self.tag(key), value, record["step"])

    def log_ranks(self, step: int, ranks: dict[str, int]) -> None:
        for name, rank in ranks.items():
            # multihead's branches are "<module>:parallel" / ":sequential"; "/" nests them in the UI
            self.writer.add_scalar("hydra/rank/" + name.replace(":", "/"), rank, step)

    def close(self) -> None:
        self.writer.close()

    @classmethod
    def tag(cls, key: str) -> str:
        """The TensorBoard tag of a record's ``key``: ``eval_loss`` -> ``eval/loss``, ``lr`` -> ``train/lr``."""
        if key.startswith("eval_"):
            return "eval/" + key.removeprefix("eval_")
        return cls._TAGS.get(key, "train/" + key)


class Sinks:
    """Every sink of a run behind one :class:`MetricsSink`: the trainer logs each record once."""

    def __init__(self, sinks: Sequence[MetricsSink]) -> None:
        self.sinks = tuple(sinks)

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def log_ranks(self, step: int, ranks: dict[str, int]) -> None:
        for sink in self.sinks:
            sink.log_ranks(step, ranks)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def check_tracker(report_to: str) -> None:
    """Refuse a tracker whose package is missing before anything is loaded, rather than at the
    first record, minutes into a run."""
    if report_to != "tensorboard":
        return
    try:
        import torch.utils.tensorboard  # noqa: F401  (it imports the tensorboard package)
    except ImportError as exc:
        raise UserError("--report-to tensorboard needs the tensorboard package, which is not installed",
                        field="report_to",
                        hint="pip install 'mobilepeft[tensorboard]', or drop --report-to") from exc


def open_sinks(run_dir: Path, report_to: str, start: int, *, root: bool) -> Sinks:
    """The sinks of a run in ``run_dir`` that starts after step ``start`` (0: a fresh run): on
    rank 0 ``metrics.jsonl`` plus ``--report-to``'s tracker, on other ranks none."""
    if not root:
        return Sinks([])
    sinks: list[MetricsSink] = [JsonlSink(run_dir / "metrics.jsonl", start)]
    if report_to == "tensorboard":
        sinks.append(TensorBoardSink(run_dir / "tensorboard", start))
    return Sinks(sinks)


def _truncate(path: Path, step: int) -> None:
    """Drop the records an interrupted run wrote after the checkpoint of ``step``."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in keep))
