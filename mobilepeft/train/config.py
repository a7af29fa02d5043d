"""Training configuration: six sections, each setting declared once (``mobilepeft/settings.py``).

``TrainConfig`` nests ``model``, ``data``, ``adapter`` (the adapter spec itself, with the chosen
method's own settings), ``schedule`` (the rank schedule's settings), ``optim`` and ``output``.
The ``mobilepeft train`` flags, the YAML keys, their checks and the saved ``train_config.yaml``
all come from these declarations. Flag names are flat (``--lr``, ``--branches``) and are also
the keys of a flat YAML file; a nested YAML file uses the section and field names
(``optim: {lr: 0.001}``), as ``train_config.yaml`` is written.

Precedence: declared defaults < ``--config run.yaml`` < flags given on the command line.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from mobilepeft.adapters.spec import AdapterSpec
from mobilepeft.errors import UserError
from mobilepeft.schedule.settings import ScheduleSettings
from mobilepeft.settings import Settings, check_fields, checked, declared, flag_name, setting

if TYPE_CHECKING:
    import torch

STAGES = ("finetune", "pretrain", "full")


@dataclass
class ModelSettings(Settings):
    path: str = setting("", flag="model", help="MobileVLM checkpoint directory.")
    stage: str = setting(
        "finetune", choices=STAGES,
        help="finetune (adapters + projector), pretrain (projector only, MobileVLM stage I) or full (every LLM "
             "weight + projector, MobileVLM stage II; writes OUT/model/).")
    train_projector: bool = setting(True, cli="switch", help="Train the LDP projector too (MobileVLM recipe: yes).")
    projector: str | None = setting(None, help="Initialise the projector from a stage-I mm_projector.safetensors.")
    train_vision_tower: bool = setting(
        False, cli="switch",
        help="With --stage full: train the CLIP tower too (its weights are written into OUT/model/). MobileVLM keeps "
             "its ImageNet-trained tower frozen; a tower that starts random (a model built from scratch) has to learn.")


@dataclass
class DataSettings(Settings):
    path: str = setting("", flag="data", help="LLaVA-format training JSON.")
    image_folder: str = setting("", help="Folder the JSON's image paths are relative to (default: the JSON's folder).")
    eval_data: str | None = setting(None, help="LLaVA-format validation JSON (loss + exact-match accuracy).")
    eval_image_folder: str | None = setting(None, help="Image folder of --eval-data (default: --image-folder).")
    max_length: int = setting(2048, min=1, help="Max sequence length including the image tokens.")
    num_workers: int | None = setting(
        None, min=0, help="DataLoader worker processes (default: 0 on CPU, 4 with pinned memory on CUDA).")
    skip_bad_samples: bool = setting(False, cli="switch",
                                     help="Skip invalid samples (counted at the end) instead of stopping.")


@dataclass
class OptimSettings(Settings):
    max_steps: int | None = setting(None, min=1, help="Optimizer steps (overrides --epochs).")
    epochs: float = setting(1.0, min=0, min_open=True, help="Epochs over the training data.")
    batch_size: int = setting(8, min=1, help="Samples per micro-batch (per process under torchrun).")
    grad_accum: int = setting(1, min=1, help="Micro-batches per optimizer step, per process.")
    global_batch_size: int | None = setting(
        None, min=1, help="Samples per optimizer step over all torchrun processes; sets --grad-accum to fit the "
                          "world size, so the same command gives the same run on 1 or N GPUs.")
    lr: float = setting(1e-4, min=0, min_open=True, help="Peak learning rate (cosine schedule with warmup).")
    projector_lr: float | None = setting(None, min=0, min_open=True,
                                         help="Learning rate of the projector (default: --lr).")
    weight_decay: float = setting(0.0, min=0, help="AdamW weight decay.")
    warmup_ratio: float = setting(0.03, min=0, max=1, help="Fraction of steps of linear warmup.")
    max_grad_norm: float = setting(1.0, min=0, min_open=True, help="Gradient clipping norm.")
    precision: str = setting("fp32", choices=("fp32", "bf16"), help="fp32 or bf16 (autocast).")
    device: str = setting("auto", help="auto (a CUDA GPU when torch sees one, else CPU), cpu, cuda or cuda:N.")
    gradient_checkpointing: bool = setting(False, cli="switch",
                                           help="Recompute LLM activations in backward to save memory.")
    fsdp: bool = setting(False, cli="switch",
                         help="Under torchrun: shard the frozen base over the processes with FSDP2 (adapters and "
                              "projector stay replicated); default DDP. See docs/distributed.md.")
    compile: bool = setting(False, cli="switch",
                            help="torch.compile every transformer block (pays off on GPUs; a rank schedule "
                                 "recompiles after each reallocation).")
    seed: int = setting(0, min=0, help="Seed for init, data order and dropout.")


@dataclass
class OutputSettings(Settings):
    dir: str = setting("", flag="output_dir", help="Run directory: adapter/, checkpoints/, metrics.jsonl.")
    save_every: int = setting(100, min=0, help="Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = setting(2, min=1, help="How many recent checkpoints to keep.")
    eval_every: int = setting(0, min=0, help="Evaluate every N steps (0: before and after only).")
    eval_max_new_tokens: int = setting(8, min=1, help="Generation length for exact-match eval.")
    eval_batch_size: int = setting(16, min=1, help="Batch size of evaluation.")
    log_every: int = setting(1, min=1, help="Write a metrics.jsonl record every N steps.")
    report_to: str = setting(
        "none", choices=("none", "tensorboard"),
        help="Also send the metrics (loss, lr, samples/s, eval scores, HyDRA ranks) to a tracker: tensorboard writes "
             "OUT/tensorboard/ (pip install 'mobilepeft[tensorboard]'). metrics.jsonl is always written.")
    resume: bool = setting(False, cli="switch", help="Continue from the latest checkpoint in --output-dir, exactly.")
    overwrite: bool = setting(
        False, cli="switch", help="Start again in an --output-dir that holds a previous run (its checkpoints, "
                                  "metrics and rank history are deleted).")


class Flag(NamedTuple):
    """Where a flag's value lives: ``section``'s ``field`` (of ``method``'s settings, if given)."""

    section: str
    field: Field
    hint: Any
    method: str | None = None


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    #: flags that may differ between a run and its --resume without changing the maths
    #: (grad_accum and global_batch_size may change with the world size: the trainer checks that
    #: the micro-batches per optimizer step, which fix the maths, stay the same)
    RESUME_FREE = ("resume", "overwrite", "output_dir", "save_every", "keep_checkpoints", "log_every", "eval_every",
                   "num_workers", "device", "eval_batch_size", "eval_max_new_tokens", "skip_bad_samples", "fsdp",
                   "compile", "grad_accum", "global_batch_size", "report_to")

    @classmethod
    def flags(cls) -> dict[str, Flag]:
        """Every setting by its flag name: the sections', then each adapter method's own."""
        from mobilepeft.adapters.registry import adapter_methods

        table: dict[str, Flag] = {}
        for section in fields(cls):
            for f, hint in declared(section.default_factory):
                table[flag_name(f)] = Flag(section.name, f, hint)
        for method in adapter_methods().values():
            for f, hint in declared(method.settings_cls):
                table[flag_name(f)] = Flag("adapter", f, hint, method.name)
        return table

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from ``{flag: value}`` (unset flags keep their defaults), validated.

        A setting of a method other than ``--adapter``'s is refused unless it has its default
        (a saved config holds every method's defaults)."""
        from mobilepeft.adapters.registry import adapter_method

        table = cls.flags()
        sections: dict[str, dict[str, Any]] = {f.name: {} for f in fields(cls)}
        own: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            entry = table.get(key)
            if entry is None:
                raise UserError(f"unknown option {key!r}", field=key)
            target = own.setdefault(entry.method, {}) if entry.method else sections[entry.section]
            target[entry.field.name] = value
        method = sections["adapter"].get("method", AdapterSpec.method)
        settings_cls = adapter_method(method).settings_cls
        for other, given in own.items():
            if other == method:
                continue
            for name, value in given.items():
                f = next(f for f in fields(adapter_method(other).settings_cls) if f.name == name)
                default = f.default_factory() if callable(f.default_factory) else f.default
                if value != default:
                    raise UserError(f"a setting of {other}, but the adapter method is {method}", field=flag_name(f),
                                    hint=f"drop --{flag_name(f).replace('_', '-')}, or use --adapter {other}")
        cfg = cls(
            model=ModelSettings(**sections["model"]),
            data=DataSettings(**sections["data"]),
            adapter=AdapterSpec(**sections["adapter"], settings=settings_cls(**own.get(method, {}))),
            schedule=ScheduleSettings(**sections["schedule"]),
            optim=OptimSettings(**sections["optim"]),
            output=OutputSettings(**sections["output"]),
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(load_yaml(yaml_path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        from mobilepeft.adapters.registry import adapter_method

        method = values.get("adapter", AdapterSpec.method)
        if not adapter_method(method).settings_cls.uses_rank and values.get("rank", AdapterSpec.rank) != AdapterSpec.rank:
            raise UserError(f"--rank has no effect on {method}: its size is set by its own settings", field="rank",
                            hint="drop --rank; see docs/methods.md for the method's size settings")
        return cls.from_flat(values)

    def to_flat(self) -> dict[str, Any]:
        """``{flag: value}`` of every setting (the chosen method's own included): what a checkpoint
        records and ``--resume`` compares."""
        out = {}
        for group in (self.model, self.data, self.adapter, self.schedule, self.optim, self.output,
                      self.adapter.settings):
            out.update({flag_name(f): getattr(group, f.name) for f, _ in declared(type(group))})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The nested form of ``train_config.yaml``: section -> field -> value (settings only)."""
        out: dict[str, Any] = {}
        for section in fields(self):
            group = getattr(self, section.name)
            out[section.name] = {f.name: getattr(group, f.name) for f, _ in declared(type(group))}
        out["adapter"].update({f.name: getattr(self.adapter.settings, f.name)
                               for f, _ in declared(type(self.adapter.settings))})
        return out

    def validate(self) -> None:
        """Types and ranges of every setting (they come from flags and from YAML), then the rules
        between them. Each error names the flag and what it accepts."""
        for group in (self.model, self.data, self.adapter, self.schedule, self.optim, self.output,
                      self.adapter.settings):
            check_fields(group)
        for name, value in (("model", self.model.path), ("data", self.data.path), ("output_dir", self.output.dir)):
            if not value:
                raise UserError(f"--{name.replace('_', '-')} is required", field=name)
        if not self.data.image_folder:
            self.data.image_folder = str(Path(self.data.path).parent)
        optim, output = self.optim, self.output
        if output.resume and output.overwrite:
            raise UserError("--resume continues the run in --output-dir and --overwrite deletes it; pick one",
                            field="overwrite")
        if optim.global_batch_size is not None and optim.grad_accum != 1:
            raise UserError("--global-batch-size sets the gradient accumulation; do not pass --grad-accum too",
                            field="global_batch_size")
        if optim.global_batch_size is not None and optim.global_batch_size % optim.batch_size:
            raise UserError(f"must be a multiple of --batch-size {optim.batch_size} (got {optim.global_batch_size})",
                            field="global_batch_size", hint="global batch = batch size x grad accum x processes")
        if self.model.train_vision_tower and self.model.stage != "full":
            raise UserError(f"--train-vision-tower trains the tower with every LLM weight; --stage {self.model.stage} "
                            "keeps the base model frozen", field="train_vision_tower",
                            hint="use --stage full, or drop --train-vision-tower")
        if optim.fsdp and self.model.stage == "full":
            raise UserError("--fsdp shards the frozen base model, and --stage full trains all of it",
                            field="fsdp", hint="drop --fsdp: --stage full runs data parallel (DDP) under torchrun")
        self.adapter.settings.resolve(self.adapter)
        if optim.device != "auto":
            import torch

            try:
                torch.device(optim.device)
            except RuntimeError as exc:
                raise UserError(f"not a torch device: {optim.device!r}", field="device",
                                hint="auto, cpu, cuda or cuda:N") from exc
        self._validate_schedule()

    def _validate_schedule(self) -> None:
        schedule, adapter, stage = self.schedule, self.adapter, self.model.stage
        if stage != "finetune" and schedule.kind != "fixed":
            raise UserError(f"--schedule {schedule.kind} allocates adapter ranks; --stage {stage} trains no adapters",
                            field="schedule", hint="drop --schedule, or use --stage finetune")
        if schedule.kind == "fixed":
            return
        if not adapter.settings.schedulable:
            raise UserError(f"--schedule {schedule.kind} needs per-module ranks; {adapter.method} has no per-module ranks",
                            field="schedule", hint=f"use --schedule fixed with --adapter {adapter.method} (docs/hydra.md)")
        g = schedule.granule
        schedule.rank_min = g if schedule.rank_min is None else schedule.rank_min
        schedule.rank_max = 4 * adapter.rank if schedule.rank_max is None else schedule.rank_max
        if not 1 <= schedule.rank_min <= adapter.rank <= schedule.rank_max:
            raise UserError(f"need 1 <= --rank-min ({schedule.rank_min}) <= --rank ({adapter.rank}) <= --rank-max "
                            f"({schedule.rank_max})", field="rank_min")
        shares = adapter.settings.rank_shares(adapter.rank)
        if any(r % g for r in shares if r):
            raise UserError(f"rank {adapter.rank} (branches {shares}) is not a multiple of --rank-granule {g}",
                            field="rank", hint=f"use a --rank divisible by {g}, or --rank-granule 1")
        window = schedule.realloc_window
        if len(window) != 2 or not 0.0 <= window[0] <= window[1] <= 1.0:
            raise UserError(f"expected two fractions start,end in [0, 1] (got {window})",
                            field="realloc_window", hint="e.g. --realloc-window 0.1,0.7")

    def torch_device(self, local_rank: int = 0, world: int = 1) -> torch.device:
        """The device of this process; under torchrun "auto" and "cuda" mean GPU ``LOCAL_RANK``."""
        import torch

        name = self.optim.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but torch sees no CUDA GPU", field="device",
                            hint="install a CUDA build of torch on a GPU machine, or use --device cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.type == "cuda" and world > 1:
            raise UserError(f"--device {self.optim.device} pins every process to one GPU", field="device",
                            hint="use --device cuda (or auto): each torchrun process takes GPU LOCAL_RANK")
        return device

    def micro_batches_per_step(self, world: int) -> int:
        """Micro-batches in one optimizer step over all ``world`` processes: what fixes the maths."""
        optim = self.optim
        micro = optim.global_batch_size // optim.batch_size if optim.global_batch_size is not None else (
            optim.grad_accum * world)
        if micro % world:
            raise UserError(f"global batch {micro * optim.batch_size} (= {micro} micro-batches of {optim.batch_size}) "
                            f"does not split over {world} processes", field="global_batch_size",
                            hint=f"use a --global-batch-size that is a multiple of {optim.batch_size * world}")
        return micro


def load_yaml(path: str | Path) -> dict[str, Any]:
    """``{flag: value}`` from a YAML file, flat (flag names) or nested (section: {field: value})."""
    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"invalid YAML: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise UserError("top level must be a mapping of option: value", path=path)
    table = TrainConfig.flags()
    by_field = {(e.section, e.field.name): flag for flag, e in table.items()}
    sections = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in sections and isinstance(value, dict):
            for inner, inner_value in value.items():
                inner_name = str(inner).replace("-", "_")
                flag = by_field.get((name, inner_name)) or (
                    inner_name if inner_name in table and table[inner_name].section == name else None)
                if flag is None:
                    where = table[inner_name].section if inner_name in table else None
                    raise UserError(f"unknown option {inner!r} in section {name!r}", path=path, field=f"{name}.{inner}",
                                    hint=f"it belongs in section {where!r}" if where else
                                    f"section {name!r} holds: {', '.join(f for s, f in by_field if s == name)}")
                out[flag] = _checked_value(table[flag], inner_value, path, f"{name}.{inner}")
        elif name in table:
            out[name] = _checked_value(table[name], value, path, str(key))
        else:
            raise UserError(f"unknown option {key!r}", path=path, field=str(key),
                            hint="keys are the `mobilepeft train` flags (batch-size or batch_size), or sections "
                                 f"({', '.join(sorted(sections))}) as in a saved train_config.yaml")
    return out


def _checked_value(entry: Flag, value: Any, path: Path, key: str) -> Any:
    try:
        return checked(entry.field, value, entry.hint)
    except UserError as err:
        raise UserError(err.message, path=path, field=key, hint=err.hint) from None
