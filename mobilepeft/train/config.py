"""Training configuration: one dataclass whose fields are the CLI flags (and the YAML keys).

Precedence: dataclass defaults < ``--config run.yaml`` < flags given on the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.adapters.targets import LLM_LINEARS
from mobilepeft.errors import UserError

STAGES = ("finetune", "pretrain", "full")


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
    rank: int = 8
    alpha: float = 16.0
    lora_dropout: float = 0.05
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: list(LLM_LINEARS))
    # method-specific (DESIGN.md §5; ignored by the other methods)
    rank_parallel: int | None = None  # multihead: parallel-branch rank (default: half of --rank)
    rank_sequential: int | None = None  # multihead: sequential-branch rank (default: the rest)
    branches: int = 4  # dmlora
    branch_drop_max: float = 0.5  # dmlora
    scalar_lr_ratio: float = 0.1  # dmlora: learning scalar LR = ratio x --lr (second half of training)
    ring_rank: int = 4  # adaring
    ring_rank_pattern: dict[str, int] = field(default_factory=dict)  # adaring, per module type
    # rank schedule (DESIGN.md §6): --rank is the budget-equivalent fixed rank r0
    schedule: str | None = None  # fixed | hierarchical | dynamic | hydra (default: hydra; fixed for adaring)
    rank_min: int | None = None  # default: --rank-granule
    rank_max: int | None = None  # default: 4 x --rank
    rank_granule: int = 2
    temperature: float = 0.5
    probe_steps: int = 8
    realloc_every: int = 0  # 0: 5% of the steps, at least 5
    realloc_window: list[float] = field(default_factory=lambda: [0.1, 0.7])
    train_projector: bool = True
    projector: str | None = None  # initialise the projector from a stage-I mm_projector.safetensors
    # optimisation
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8  # per process (per GPU under torchrun)
    grad_accum: int = 1  # micro-batches per optimizer step, per process
    global_batch_size: int | None = None  # samples per optimizer step over all processes; sets grad_accum
    lr: float = 1e-4
    projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False
    fsdp: bool = False  # under torchrun: shard the frozen base with FSDP2 (adapters stay replicated)
    compile: bool = False  # torch.compile every transformer block
    max_length: int = 2048
    seed: int = 0
    num_workers: int | None = None  # None: 0 on CPU, 4 (with pinned memory) on CUDA
    # bookkeeping
    save_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: evaluate before and after training only
    eval_max_new_tokens: int = 8
    eval_batch_size: int = 16
    log_every: int = 1
    skip_bad_samples: bool = False
    resume: bool = False

    #: fields that may differ between a run and its --resume without changing the maths
    #: (grad_accum and global_batch_size may change with the world size: the trainer checks that
    #: the micro-batches per optimizer step, which fix the maths, stay the same)
    RESUME_FREE = ("resume", "output_dir", "save_every", "keep_checkpoints", "log_every", "eval_every", "num_workers", "device",
                   "eval_batch_size", "eval_max_new_tokens", "skip_bad_samples", "fsdp", "compile", "grad_accum",
                   "global_batch_size")

    def validate(self) -> None:
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name.replace('_', '-')} is required", field=name)
        if self.data and not self.image_folder:
            self.image_folder = str(Path(self.data).parent)
        choices = {"stage": STAGES, "precision": ("fp32", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"must be one of {', '.join(allowed)} (got {getattr(self, name)!r})", field=name)
        positive = ("rank", "batch_size", "grad_accum", "max_length", "keep_checkpoints", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"must be >= 1 (got {getattr(self, name)})", field=name)
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("must be >= 1", field="max_steps")
        if self.global_batch_size is not None and self.grad_accum != 1:
            raise UserError("--global-batch-size sets the gradient accumulation; do not pass --grad-accum too",
                            field="global_batch_size")
        if self.global_batch_size is not None and self.global_batch_size % self.batch_size:
            raise UserError(f"must be a multiple of --batch-size {self.batch_size} (got {self.global_batch_size})",
                            field="global_batch_size", hint="global batch = batch size x grad accum x processes")
        if self.num_workers is not None and self.num_workers < 0:
            raise UserError(f"must be >= 0 (got {self.num_workers})", field="num_workers")
        if self.fsdp and self.stage == "full":
            raise UserError("--fsdp shards the frozen base model, and --stage full trains all of it",
                            field="fsdp", hint="drop --fsdp: --stage full runs data parallel (DDP) under torchrun")
        if self.lr <= 0:
            raise UserError("must be > 0", field="lr")
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
            try:
                torch.device(self.device)
            except RuntimeError as exc:
                raise UserError(f"not a torch device: {self.device!r}", field="device",
                                hint="auto, cpu, cuda or cuda:N") from exc
        self._validate_schedule()
        if self.branches < 1:
            raise UserError(f"must be >= 1 (got {self.branches})", field="branches")
        if not 0.0 <= self.branch_drop_max < 1.0:
            raise UserError(f"must be in [0, 1) (got {self.branch_drop_max})", field="branch_drop_max")
        if self.ring_rank < 1 or any(int(v) < 1 for v in self.ring_rank_pattern.values()):
            raise UserError("ring ranks must be >= 1", field="ring_rank")

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
        if g < 1:
            raise UserError(f"must be >= 1 (got {g})", field="rank_granule")
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
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UserError(f"unknown option {key!r}", path=path, field=str(key),
                            hint="keys are the `mobilepeft train` flags, e.g. batch-size or batch_size")
        out[name] = value
    return out
