"""Training configuration: one dataclass whose fields are the CLI flags (and the YAML keys).

Precedence: dataclass defaults < ``--config run.yaml`` < flags given on the command line.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import LLM_LINEARS
from mobilepeft.errors import UserError

if TYPE_CHECKING:
    import torch

STAGES = ("finetune", "pretrain", "full")


def at_least(low: float) -> dict[str, Any]:
    """Field metadata: the value is >= ``low``."""
    return {"min": low}


def above(low: float) -> dict[str, Any]:
    """Field metadata: the value is > ``low``."""
    return {"min": low, "min_open": True}


def between(low: float, high: float, *, upper_open: bool = False) -> dict[str, Any]:
    """Field metadata: ``low <= value <= high`` (``< high`` with ``upper_open``)."""
    return {"min": low, "max": high, "max_open": upper_open}


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """The accepted range of a numeric field, as in an error message or ``--help``."""
    parts = []
    if "min" in meta:
        parts.append(f"{'>' if meta.get('min_open') else '>='} {meta['min']:g}")
    if "max" in meta:
        parts.append(f"{'<' if meta.get('max_open') else '<='} {meta['max']:g}")
    return " and ".join(parts)


def _check_range(name: str, value: float, meta: typing.Mapping[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"must be a finite number (got {value})", field=name)
    low, high = meta.get("min"), meta.get("max")
    too_low = low is not None and (value <= low if meta.get("min_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("max_open") else value > high)
    if too_low or too_high:
        raise UserError(f"must be {describe_range(meta)} (got {value:g})", field=name)


def _checked(f: Field, value: Any, hint: Any) -> Any:
    """``value`` of field ``f`` with its declared type and within its declared range."""
    value = _typed(f.name, value, hint)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_range(f.name, value, f.metadata)
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (YAML and Python callers bypass typer)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(name, value, inner)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"expected a list, got {value!r}", field=name)
        return [_typed(name, v, args[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected a mapping NAME: VALUE, got {value!r}", field=name)
        return {_typed(name, k, args[0]): _typed(name, v, args[1]) for k, v in value.items()}
    ok = isinstance(value, hint) and not (hint in (int, float) and isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise UserError(f"expected {_TYPE_NAMES.get(hint, hint.__name__)}, got {value!r}", field=name)
    return value


@dataclass
class TrainConfig:
    model: str = ""
    data: str = ""
    image_folder: str = ""
    output_dir: str = ""
    eval_data: str | None = None
    eval_image_folder: str | None = None
    # what is trained
    # finetune: adapters (+ projector); pretrain: projector only (MobileVLM stage I);
    # full: every LLM weight + the projector (MobileVLM stage II; the vision tower stays frozen)
    stage: str = "finetune"
    adapter: str = "lora"
    rank: int = field(default=8, metadata=at_least(1))
    alpha: float = field(default=16.0, metadata=above(0))
    lora_dropout: float = field(default=0.05, metadata=between(0, 1, upper_open=True))
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: list(LLM_LINEARS))
    # method-specific (DESIGN.md §5; ignored by the other methods)
    rank_parallel: int | None = field(default=None, metadata=at_least(0))  # multihead: parallel-branch rank (default: half of --rank)
    rank_sequential: int | None = field(default=None, metadata=at_least(0))  # multihead: sequential-branch rank (default: the rest)
    branches: int = field(default=4, metadata=at_least(1))  # dmlora
    branch_drop_max: float = field(default=0.5, metadata=between(0, 1, upper_open=True))  # dmlora
    scalar_lr_ratio: float = field(default=0.1, metadata=above(0))  # dmlora: learning scalar LR = ratio x --lr (second half of training)
    ring_rank: int = field(default=4, metadata=at_least(1))  # adaring
    ring_rank_pattern: dict[str, int] = field(default_factory=dict)  # adaring, per module type
    # rank schedule (DESIGN.md §6): --rank is the budget-equivalent fixed rank r0
    schedule: str | None = None  # fixed | hierarchical | dynamic | hydra (default: hydra; fixed for adaring)
    rank_min: int | None = field(default=None, metadata=at_least(1))  # default: --rank-granule
    rank_max: int | None = field(default=None, metadata=at_least(1))  # default: 4 x --rank
    rank_granule: int = field(default=2, metadata=at_least(1))
    temperature: float = field(default=0.5, metadata=at_least(0))
    probe_steps: int = field(default=8, metadata=at_least(1))
    realloc_every: int = field(default=0, metadata=at_least(0))  # 0: 5% of the steps, at least 5
    realloc_window: list[float] = field(default_factory=lambda: [0.1, 0.7])
    train_projector: bool = True
    projector: str | None = None  # initialise the projector from a stage-I mm_projector.safetensors
    # optimisation
    max_steps: int | None = field(default=None, metadata=at_least(1))
    epochs: float = field(default=1.0, metadata=above(0))
    batch_size: int = field(default=8, metadata=at_least(1))  # per process (per GPU under torchrun)
    grad_accum: int = field(default=1, metadata=at_least(1))  # micro-batches per optimizer step, per process
    global_batch_size: int | None = field(default=None, metadata=at_least(1))  # samples per optimizer step over all processes; sets grad_accum
    lr: float = field(default=1e-4, metadata=above(0))
    projector_lr: float | None = field(default=None, metadata=above(0))
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    warmup_ratio: float = field(default=0.03, metadata=between(0, 1))
    max_grad_norm: float = field(default=1.0, metadata=above(0))
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False
    fsdp: bool = False  # under torchrun: shard the frozen base with FSDP2 (adapters stay replicated)
    compile: bool = False  # torch.compile every transformer block
    max_length: int = field(default=2048, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))
    num_workers: int | None = field(default=None, metadata=at_least(0))  # None: 0 on CPU, 4 (with pinned memory) on CUDA
    # bookkeeping
    save_every: int = field(default=100, metadata=at_least(0))
    keep_checkpoints: int = field(default=2, metadata=at_least(1))
    eval_every: int = field(default=0, metadata=at_least(0))  # 0: evaluate before and after training only
    eval_max_new_tokens: int = field(default=8, metadata=at_least(1))
    eval_batch_size: int = field(default=16, metadata=at_least(1))
    log_every: int = field(default=1, metadata=at_least(1))
    skip_bad_samples: bool = False
    resume: bool = False
    overwrite: bool = False  # start again in a directory that holds a previous run

    #: fields that may differ between a run and its --resume without changing the maths
    #: (grad_accum and global_batch_size may change with the world size: the trainer checks that
    #: the micro-batches per optimizer step, which fix the maths, stay the same)
    RESUME_FREE = ("resume", "overwrite", "output_dir", "save_every", "keep_checkpoints", "log_every", "eval_every", "num_workers", "device",
                   "eval_batch_size", "eval_max_new_tokens", "skip_bad_samples", "fsdp", "compile", "grad_accum",
                   "global_batch_size")

    def validate(self) -> None:
        """Types and ranges of every field (they come from flags and from YAML), then the rules
        between fields. Each error names the field and what it accepts."""
        self._check_fields()
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name.replace('_', '-')} is required", field=name)
        if self.data and not self.image_folder:
            self.image_folder = str(Path(self.data).parent)
        choices = {"stage": STAGES, "precision": ("fp32", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"must be one of {', '.join(allowed)} (got {getattr(self, name)!r})", field=name)
        if self.resume and self.overwrite:
            raise UserError("--resume continues the run in --output-dir and --overwrite deletes it; pick one",
                            field="overwrite")
        if self.global_batch_size is not None and self.grad_accum != 1:
            raise UserError("--global-batch-size sets the gradient accumulation; do not pass --grad-accum too",
                            field="global_batch_size")
        if self.global_batch_size is not None and self.global_batch_size % self.batch_size:
            raise UserError(f"must be a multiple of --batch-size {self.batch_size} (got {self.global_batch_size})",
                            field="global_batch_size", hint="global batch = batch size x grad accum x processes")
        if self.fsdp and self.stage == "full":
            raise UserError("--fsdp shards the frozen base model, and --stage full trains all of it",
                            field="fsdp", hint="drop --fsdp: --stage full runs data parallel (DDP) under torchrun")
        from mobilepeft.adapters.inject import ADAPTERS

        if self.adapter not in ADAPTERS:
            raise UserError(f"unknown adapter method {self.adapter!r}", field="adapter",
                            hint=f"choose one of: {', '.join(ADAPTERS)}")
        if self.rank_parallel is not None or self.rank_sequential is not None:
            par = self.rank_parallel if self.rank_parallel is not None else self.rank - self.rank_sequential
            seq = self.rank_sequential if self.rank_sequential is not None else self.rank - par
            if par < 0 or seq < 0 or par + seq < 1:
                raise UserError(f"branch ranks must be >= 0 with a positive sum (got {par} + {seq})",
                                field="rank_parallel", hint="--rank-parallel + --rank-sequential sets the total rank")
            self.rank_parallel, self.rank_sequential, self.rank = par, seq, par + seq
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except RuntimeError as exc:
                raise UserError(f"not a torch device: {self.device!r}", field="device",
                                hint="auto, cpu, cuda or cuda:N") from exc
        self._validate_schedule()
        if any(v < 1 for v in self.ring_rank_pattern.values()):
            raise UserError(f"ring ranks must be >= 1 (got {self.ring_rank_pattern})", field="ring_rank_pattern")

    def _check_fields(self) -> None:
        """Each field's value has its declared type (ints for floats are widened) and range."""
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name), hints[f.name]))

    def _validate_schedule(self) -> None:
        from mobilepeft.schedule.scheduler import SCHEDULES

        if self.schedule is None:
            self.schedule = "fixed" if self.adapter == "adaring" or self.stage != "finetune" else "hydra"
        if self.schedule not in SCHEDULES:
            raise UserError(f"must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})", field="schedule")
        if self.stage != "finetune" and self.schedule != "fixed":
            raise UserError(f"--schedule {self.schedule} allocates adapter ranks; --stage {self.stage} trains no adapters",
                            field="schedule", hint="drop --schedule, or use --stage finetune")
        if self.schedule == "fixed":
            return
        if self.adapter == "adaring":
            raise UserError(f"--schedule {self.schedule} needs per-module ranks; adaring has ring ranks per group",
                            field="schedule", hint="use --schedule fixed with --adapter adaring (docs/hydra.md)")
        g = self.rank_granule
        self.rank_min = g if self.rank_min is None else self.rank_min
        self.rank_max = 4 * self.rank if self.rank_max is None else self.rank_max
        if not 1 <= self.rank_min <= self.rank <= self.rank_max:
            raise UserError(f"need 1 <= --rank-min ({self.rank_min}) <= --rank ({self.rank}) <= --rank-max "
                            f"({self.rank_max})", field="rank_min")
        shares = self.adapter_spec().branch_ranks(self.rank) if self.adapter == "multihead" else (self.rank,)
        if any(r % g for r in shares if r):
            raise UserError(f"rank {self.rank} (branches {shares}) is not a multiple of --rank-granule {g}",
                            field="rank", hint=f"use a --rank divisible by {g}, or --rank-granule 1")
        if len(self.realloc_window) != 2 or not 0.0 <= self.realloc_window[0] <= self.realloc_window[1] <= 1.0:
            raise UserError(f"expected two fractions start,end in [0, 1] (got {self.realloc_window})",
                            field="realloc_window", hint="e.g. --realloc-window 0.1,0.7")

    def torch_device(self, local_rank: int = 0, world: int = 1) -> torch.device:
        """The device of this process; under torchrun "auto" and "cuda" mean GPU ``LOCAL_RANK``."""
        import torch

        name = self.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but torch sees no CUDA GPU", field="device",
                            hint="install a CUDA build of torch on a GPU machine, or use --device cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.type == "cuda" and world > 1:
            raise UserError(f"--device {self.device} pins every process to one GPU", field="device",
                            hint="use --device cuda (or auto): each torchrun process takes GPU LOCAL_RANK")
        return device

    def micro_batches_per_step(self, world: int) -> int:
        """Micro-batches in one optimizer step over all ``world`` processes: what fixes the maths."""
        if self.global_batch_size is not None:
            micro = self.global_batch_size // self.batch_size
        else:
            micro = self.grad_accum * world
        if micro % world:
            raise UserError(f"global batch {micro * self.batch_size} (= {micro} micro-batches of {self.batch_size}) "
                            f"does not split over {world} processes", field="global_batch_size",
                            hint=f"use a --global-batch-size that is a multiple of {self.batch_size * world}")
        return micro

    def schedule_settings(self):
        from mobilepeft.schedule.scheduler import ScheduleSettings

        return ScheduleSettings(kind=self.schedule, rank_min=self.rank_min, rank_max=self.rank_max,
                                granule=self.rank_granule, temperature=self.temperature,
                                probe_steps=self.probe_steps, realloc_every=self.realloc_every,
                                realloc_window=tuple(self.realloc_window), seed=self.seed)

    def adapter_spec(self) -> AdapterSpec:
        return AdapterSpec(method=self.adapter, rank=self.rank, alpha=self.alpha, dropout=self.lora_dropout,
                           target_modules=list(self.target_modules), use_rslora=self.use_rslora,
                           rank_parallel=self.rank_parallel, rank_sequential=self.rank_sequential,
                           branches=self.branches, branch_drop_max=self.branch_drop_max,
                           scalar_lr_ratio=self.scalar_lr_ratio, ring_rank=self.ring_rank,
                           ring_rank_pattern={k: int(v) for k, v in self.ring_rank_pattern.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(load_yaml(yaml_path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("adapter") == "adaring" and "rank" in values:
            raise UserError("--rank has no effect on adaring: its size is set by the ring ranks", field="rank",
                            hint="drop --rank; use --ring-rank or --ring-rank-pattern (docs/methods.md)")
        cfg = cls(**values)
        cfg.validate()
        return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"invalid YAML: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise UserError("top level must be a mapping of option: value", path=path)
    declared = {f.name: f for f in fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in declared:
            raise UserError(f"unknown option {key!r}", path=path, field=str(key),
                            hint="keys are the `mobilepeft train` flags, e.g. batch-size or batch_size")
        try:
            out[name] = _checked(declared[name], value, hints[name])
        except UserError as err:
            raise UserError(err.message, path=path, field=str(key), hint=err.hint) from None
    return out
