"""The training recipe: an explicit loop over optimizer steps (torchtune style).

Exact resume: the batch order is a pure function of (seed, epoch), every checkpoint stores the
trainable tensors, optimizer, LR schedule and RNG states, so ``--resume`` after a crash yields
the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mobilepeft.adapters.files import PROJECTOR_FILE, load_projector, save_adapter, save_projector
from mobilepeft.adapters.inject import (
    adapter_layers,
    adapter_parameters,
    inject_adapters,
    lr_multipliers,
    set_progress,
)
from mobilepeft.data.collate import collate_batch
from mobilepeft.data.dataset import SupervisedDataset
from mobilepeft.data.llava import load_llava
from mobilepeft.distributed import from_environment, process_group
from mobilepeft.errors import UserError
from mobilepeft.io import (
    atomic_dir,
    clean_stale_temporaries,
    load_plain,
    save_safetensors,
    torch_save,
    write_json,
    write_text,
)
from mobilepeft.loading import load_vlm
from mobilepeft.merge import save_like_input
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM
from mobilepeft.outputs import claim_output_dir, write_marker
from mobilepeft.schedule.plot import plot_rank_history
from mobilepeft.schedule.scheduler import RankScheduler
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.evaluate import evaluate
from mobilepeft.train.parallel import ParallelModel, compile_blocks


class TrainingDiverged(UserError):
    """Loss or parameters became NaN/inf; no checkpoint holding them is written, so the last one
    on disk is good."""


@dataclass
class TrainResult:
    output_dir: Path
    #: what the stage produced: adapter/ (finetune), projector/ (pretrain) or model/ (full)
    adapter_dir: Path
    steps: int
    final_loss: float
    eval_before: dict[str, float] | None
    eval_after: dict[str, float] | None
    skipped: list[str]


class ResumableBatchSampler(Sampler[list[int]]):
    """Micro-batches ``start, start+1, ...`` of one process: epoch e is a permutation seeded by
    (seed, e); under torchrun, rank r of ``world`` takes micro-batches r, r+world, ...

    With ``world`` dividing the micro-batches per optimizer step, a step's micro-batches over
    all ranks are the ones a single process takes for that step, whatever the world size.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.rank, self.world = rank, world
        self.per_epoch = math.ceil(n / batch_size)

    def micro_batches(self) -> range:
        return range(self.start + self.rank, self.total, self.world)

    def __iter__(self) -> Iterator[list[int]]:
        perm, perm_epoch = None, -1
        for k in self.micro_batches():
            epoch, pos = divmod(k, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            yield perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.micro_batches())


def micro_batch_seed(seed: int, k: int) -> int:
    """The RNG seed of micro-batch ``k`` (dropout, DMLoRA's branch drop): a function of the
    micro-batch alone, so the stream is the same on any number of ranks and after ``--resume``."""
    return (seed * 1_000_003 + k) % (2**63)


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Trainer:
    def __init__(self, cfg: TrainConfig, *, progress: bool = True,
                 callbacks: list[Callable[[Trainer, int, dict[str, Any]], None]] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.callbacks = callbacks or []
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"

    # --- setup ---------------------------------------------------------------------------
    def _build_model(self) -> MobileVLMForCausalLM:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = load_vlm(cfg.model)
        if cfg.projector:
            _load_projector(model, Path(cfg.projector))
        if cfg.stage == "finetune":
            self.spec = cfg.adapter_spec()
            inject_adapters(model, self.spec)
            for p in adapter_parameters(model).values():
                p.requires_grad_(True)
        elif cfg.stage == "full":
            model.llm.requires_grad_(True)
        self.train_projector = cfg.stage == "pretrain" or cfg.train_projector
        model.mm_projector.requires_grad_(self.train_projector)
        if cfg.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.to(self.device)

    def _dataset(self, model: MobileVLMForCausalLM, json_path: str, image_folder: str) -> tuple[SupervisedDataset, list[str]]:
        convs, skipped = load_llava(json_path, image_folder, skip_bad=self.cfg.skip_bad_samples)
        ds = SupervisedDataset(convs, model.tokenizer, image_folder, model.config.image_size,
                               model.config.num_image_tokens, self.cfg.max_length, skip_bad=self.cfg.skip_bad_samples)
        return ds, skipped + ds.skipped

    def _optimizer(self, model: MobileVLMForCausalLM) -> torch.optim.Optimizer:
        """AdamW with one group per learning rate: adapters, adapter parameters with their own LR
        multiplier (DMLoRA's learning scalar, no weight decay), and the projector."""
        cfg = self.cfg
        multipliers = lr_multipliers(model) if cfg.stage == "finetune" else {}
        groups: dict[tuple[float, float], list[tuple[str, torch.nn.Parameter]]] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("mm_projector."):
                key = (cfg.projector_lr or cfg.lr, cfg.weight_decay)
            elif name in multipliers:
                key = (cfg.lr * multipliers[name], 0.0)
            else:
                key = (cfg.lr, cfg.weight_decay)
            groups.setdefault(key, []).append((name, p))
        if not groups:
            raise UserError("nothing to train: no adapter targets and the projector is frozen",
                            hint="use --train-projector or --stage finetune with --target-modules")
        #: what checkpoints hold: every parameter the optimizer owns, even while frozen for a stage
        self.trainable_names = [n for named in groups.values() for n, _ in named]
        #: the group whose learning rate is the run's --lr (logged, and seen by the rank schedule);
        #: DMLoRA's learning scalars and the projector may run at other rates
        keys = list(groups)
        self.main_group = next((i for i, (lr, _) in enumerate(keys) if lr == cfg.lr), 0)
        return torch.optim.AdamW([{"params": [p for _, p in named], "lr": lr, "weight_decay": wd}
                                  for (lr, wd), named in groups.items()], betas=(0.9, 0.999), eps=1e-8)

    # --- checkpoints ---------------------------------------------------------------------
    def _trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n].detach().cpu() for n in self.trainable_names}

    def _finite_state(self, model: torch.nn.Module, step: int) -> dict[str, torch.Tensor]:
        """The trainable tensors, refused if any holds NaN/inf: such a state is never written."""
        state = self._trainable_state(model)
        bad = [n for n, t in state.items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise self._diverged(f"{len(bad)} trained tensors hold NaN/inf after step {step} (first: {bad[0]})")
        return state

    def _diverged(self, what: str) -> TrainingDiverged:
        last = self.latest_checkpoint()
        kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint was written"
        bf16 = "; or train with --precision fp32" if self.cfg.precision == "bf16" else ""
        return TrainingDiverged(
            f"{what}: training stopped and nothing non-finite was saved; {kept}",
            hint=f"start again with a lower learning rate, e.g. --lr {self.cfg.lr / 10:g} --overwrite{bf16} "
                 "(--resume would repeat the same steps and diverge again)")

    def _save_checkpoint(self, state: dict[str, torch.Tensor], optimizer, scheduler, step: int) -> Path:
        """Write ``state`` (from :meth:`_finite_state`, which every rank runs) with the optimizer,
        LR schedule and rank schedule of ``step``."""
        path = self.ckpt_root / f"step-{step:07d}"
        with atomic_dir(path) as tmp:
            save_safetensors(state, tmp / "trainable.safetensors")
            # No RNG states: dropout is seeded per micro-batch (micro_batch_seed), the schedule
            # keeps its own generator in rank_schedule.pt.
            torch_save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            write_json(tmp / "trainer_state.json", {"step": step, "micro_batches_per_step": self.micro_per_step,
                                                    "world_size": self.dist.world, "config": self.cfg.to_dict()})
            if self.ranker is not None:
                torch_save(self.ranker.state_dict(), tmp / "rank_schedule.pt")
        for old in sorted(self.ckpt_root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _resume_checkpoint(self) -> Path:
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise UserError("--resume: no checkpoint found", path=self.ckpt_root,
                            hint="run without --resume to start from scratch")
        state = read_trainer_state(ckpt)
        saved, now = state["config"], self.cfg.to_dict()
        diff = [k for k in now if k not in TrainConfig.RESUME_FREE and saved.get(k) != now[k]]
        if diff:
            k = diff[0]
            raise UserError(f"--resume with a different setting: {k} was {saved.get(k)!r}, now {now[k]!r}",
                            path=ckpt / "trainer_state.json", field=k,
                            hint="resume with the original options, or use a new --output-dir")
        micro = state.get("micro_batches_per_step", saved["grad_accum"])
        if micro != self.micro_per_step:
            b, world = self.cfg.batch_size, self.dist.world
            raise UserError(
                f"--resume with a different global batch: the checkpoint took {micro} micro-batches of {b} per step "
                f"(global batch {micro * b}, {state.get('world_size', 1)} process(es)); {world} process(es) with these "
                f"options take {self.micro_per_step}", path=ckpt / "trainer_state.json", field="grad_accum",
                hint=f"pass --global-batch-size {micro * b}" + (f" (or --grad-accum {micro // world})"
                                                                  if micro % world == 0 else ""))
        return ckpt

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_root.glob("step-*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    def _restore(self, ckpt: Path, model, optimizer, scheduler) -> int:
        from safetensors.torch import load_file

        state = read_trainer_state(ckpt)
        params = dict(model.named_parameters())
        file = ckpt / "trainable.safetensors"
        try:
            tensors = load_file(str(file))
        except Exception as exc:  # safetensors raises its own SafetensorError for any malformed file
            raise UserError(f"cannot read the trained tensors ({exc})", path=file,
                            hint="the file is truncated, corrupt or not a safetensors file; resume from an earlier "
                                 "checkpoint or start again with --overwrite") from exc
        unknown = sorted(set(tensors) - set(self.trainable_names))
        if unknown:
            raise UserError(f"holds tensors this run does not train: {unknown[:3]}", path=file,
                            hint="resume with the options the run started with")
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor)
        extra = _load_state(ckpt / "optimizer.pt")
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        return int(state["step"])

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train; under ``torchrun`` every process runs this, rank 0 alone writes files."""
        env = from_environment()
        device = self.cfg.torch_device(env.local_rank, env.world)
        with process_group(env, device) as self.dist:
            self.device = device
            result = self._run()
            self.dist.barrier()  # rank 0's outputs exist when any rank returns
            return result

    def _claim_run_dir(self) -> None:
        """Rank 0 checks --output-dir (mobilepeft/outputs.py) before anything is loaded; every rank
        stops on its refusal."""
        cfg, refusal = self.cfg, None
        if self.dist.is_root:
            try:
                claim_output_dir(self.out, "run", overwrite=cfg.overwrite, resume=cfg.resume,
                                 inputs=(cfg.model, cfg.data, cfg.eval_data, cfg.image_folder, cfg.eval_image_folder,
                                         cfg.projector))
            except UserError as err:
                refusal = err.render()
        refusal = self.dist.broadcast(refusal)
        if refusal:
            raise UserError(refusal)

    def _start_run_dir(self) -> None:
        """A fresh run replaces the claimed directory (empty, or a previous run with --overwrite)
        only now that the model and data have loaded, so a refused input leaves it as it was."""
        if self.cfg.resume:
            clean_stale_temporaries(self.ckpt_root)
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        write_marker(self.out, "run")

    def _run(self) -> TrainResult:
        cfg, dist, root = self.cfg, self.dist, self.dist.is_root
        self._claim_run_dir()
        self._say(f"loading the model from {cfg.model}")
        self.model = model = self._build_model()
        train_ds, skipped = self._dataset(model, cfg.data, cfg.image_folder)
        eval_ds = None
        if cfg.eval_data:
            eval_ds, eval_skipped = self._dataset(model, cfg.eval_data, cfg.eval_image_folder or cfg.image_folder)
            skipped += eval_skipped
        self.micro_per_step = micro = cfg.micro_batches_per_step(dist.world)
        accum = micro // dist.world  # this process's micro-batches per step
        micro_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
        total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_per_epoch / micro))
        self.ranker = None
        resume_from = self._resume_checkpoint() if cfg.resume else None
        if cfg.stage == "finetune" and cfg.schedule != "fixed":
            self.ranker = RankScheduler(model, cfg.schedule_settings(), total_steps, dist)
            self._say(f"{cfg.schedule} rank schedule: the first {cfg.probe_steps} batches probe each module's "
                      "sensitivity before ranks are allocated")
            if resume_from is not None:  # the checkpoint's ranks (shapes) before the optimizer sees them
                self.ranker.load_state_dict(_load_state(resume_from / "rank_schedule.pt"))
        optimizer = self._optimizer(model)
        warmup = int(cfg.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup, total_steps))

        start = 0
        metrics_file = self.out / "metrics.jsonl"
        if root:
            self._start_run_dir()
        if resume_from is not None:
            start = self._restore(resume_from, model, optimizer, scheduler)
            if root:
                _truncate_metrics(metrics_file, start)
        if root:
            write_text(self.out / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if cfg.compile:
            compile_blocks(model)
        # Text-only samples leave the vision side (projector, tower adapters) out of the graph.
        parallel = ParallelModel(model, dist, self.device, fsdp=cfg.fsdp,
                                 find_unused=any(c.image is None for c in train_ds.conversations))
        if cfg.fsdp and not dist.active:
            print("--fsdp: a single process, nothing to shard (launch with torchrun)", file=sys.stderr, flush=True)
        if dist.active and root:
            print(f"torchrun: {dist.world} processes, {parallel.describe()} on {self.device.type}; global batch "
                  f"{micro * cfg.batch_size} = {dist.world} x {accum} micro-batches x {cfg.batch_size}",
                  file=sys.stderr, flush=True)

        eval_before = None
        if eval_ds is not None and start == 0:
            self._say(f"evaluating before training ({len(eval_ds)} samples)")
            eval_before = self._evaluate(eval_ds)
            if root:
                _append_metrics(metrics_file, {"step": 0, "eval_loss": eval_before["loss"],
                                               "eval_accuracy": eval_before["accuracy"]})

        sampler = ResumableBatchSampler(len(train_ds), cfg.batch_size, cfg.seed, start * micro, total_steps * micro,
                                        dist.rank, dist.world)
        micro_ids = iter(sampler.micro_batches())
        on_gpu = self.device.type == "cuda"
        workers = cfg.num_workers if cfg.num_workers is not None else (4 if on_gpu else 0)
        # A private generator: DataLoader would otherwise draw its worker base seed from the global RNG.
        loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=on_gpu,
                            collate_fn=partial(collate_batch, pad_id=model.tokenizer.pad_id),
                            generator=torch.Generator().manual_seed(cfg.seed))
        batches = iter(loader)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        model.train()
        # A live bar on a terminal; in logs (CI, nohup) a plain line every ~10% instead of \r spam.
        interactive = self.progress and root and sys.stderr.isatty()
        plain_every = max(1, total_steps // 10) if self.progress and root and not interactive else 0
        bar = tqdm(total=total_steps, initial=start, disable=not interactive, desc="train", unit="step",
                   dynamic_ncols=True, mininterval=0.5)
        loss_value = float("nan")
        t_last, samples_since = time.perf_counter(), 0
        layers = list(adapter_layers(model).values())  # resizes swap parameters, never layers
        for step in range(start, total_steps):
            set_progress(layers, step, total_steps)
            local_loss, local_samples = 0.0, 0
            with self.ranker.tap(step) if self.ranker else contextlib.nullcontext() as tap:
                for j in range(accum):
                    torch.manual_seed(micro_batch_seed(cfg.seed, next(micro_ids)))
                    batch = to_device(next(batches), self.device)
                    with parallel.accumulating(last=j == accum - 1), autocast:
                        out = parallel(batch)
                        (out.loss / accum).backward()
                    local_loss += float(out.loss.detach()) / accum
                    local_samples += batch["input_ids"].shape[0]
            params = [p for g in optimizer.param_groups for p in g["params"]]  # resizes swap parameters
            parallel.reduce_gradients(params)
            if self.ranker:
                self.ranker.after_backward(step, tap)
            step_loss, step_samples = dist.all_sum([local_loss / dist.world, local_samples], self.device)
            samples_since += int(step_samples)
            if not math.isfinite(step_loss):
                raise self._diverged(f"the loss became {step_loss} at step {step + 1}")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = step_loss
            done = step + 1
            lr_now = scheduler.get_last_lr()[self.main_group]
            record: dict[str, Any] = {"step": done, "loss": step_loss, "lr": lr_now, "grad_norm": grad_norm}
            if self.ranker and self.ranker.after_step(step, step_loss, optimizer, lr_now):
                before = set(map(id, params))
                parallel.resized([p for g in optimizer.param_groups for p in g["params"] if id(p) not in before],
                                 optimizer)
                record["rank_moves"] = len(self.ranker.history[-1].moves)
                if root:
                    self.ranker.write_history(self.out / "rank_history.json")
            if done % cfg.log_every == 0 or done == total_steps:
                now = time.perf_counter()
                record["samples_per_s"] = samples_since / max(now - t_last, 1e-9)
                t_last, samples_since = now, 0
                if root:
                    _append_metrics(metrics_file, record)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{record['lr']:.2e}",
                                sps=f"{record['samples_per_s']:.1f}")
            bar.update(1)
            if plain_every and (done % plain_every == 0 or done == total_steps):
                print(f"step {done}/{total_steps}  loss {step_loss:.4f}  lr {record['lr']:.2e}", file=sys.stderr,
                      flush=True)
            if cfg.eval_every and done % cfg.eval_every == 0 and eval_ds is not None and done != total_steps:
                ev = self._evaluate(eval_ds)
                if root:
                    _append_metrics(metrics_file, {"step": done, "eval_loss": ev["loss"],
                                                   "eval_accuracy": ev["accuracy"]})
            if cfg.save_every and done % cfg.save_every == 0:
                state = self._finite_state(model, done)  # on every rank: a refusal stops them all
                if root:
                    self._save_checkpoint(state, optimizer, scheduler, done)
            for cb in self.callbacks:
                cb(self, done, record)
        bar.close()

        eval_after = None
        if eval_ds is not None:
            self._say(f"evaluating after training ({len(eval_ds)} samples)")
            eval_after = self._evaluate(eval_ds)
            if root:
                _append_metrics(metrics_file, {"step": total_steps, "eval_loss": eval_after["loss"],
                                               "eval_accuracy": eval_after["accuracy"]})
        model.eval()
        state = self._finite_state(model, total_steps)
        adapter_dir = self._save_outputs(model) if root else self._output_dir()
        last = self.latest_checkpoint()
        if root and (last is None or int(last.name.split("-")[1]) != total_steps):
            self._save_checkpoint(state, optimizer, scheduler, total_steps)
        return TrainResult(self.out, adapter_dir, total_steps, loss_value, eval_before, eval_after, skipped)

    def _say(self, what: str) -> None:
        """One line per long phase on stderr, so a piped or logged run is never silent for minutes."""
        if self.progress and self.dist.is_root:
            print(f"{what} ...", file=sys.stderr, flush=True)

    def _evaluate(self, eval_ds: SupervisedDataset) -> dict[str, float]:
        """Every rank evaluates the whole set (FSDP's collectives need all of them in step; the
        sets are validation-sized); the numbers are the same on every rank."""
        return evaluate(self.model, eval_ds, batch_size=self.cfg.eval_batch_size,
                        max_new_tokens=self.cfg.eval_max_new_tokens)

    def _output_dir(self) -> Path:
        """What the stage produces: adapter/ (finetune), model/ (full) or projector/ (pretrain)."""
        return self.out / {"finetune": "adapter", "full": "model", "pretrain": "projector"}[self.cfg.stage]

    def _save_outputs(self, model: MobileVLMForCausalLM) -> Path:
        cfg, out = self.cfg, self._output_dir()
        if cfg.stage == "finetune":
            spec = self.ranker.final_spec(self.spec) if self.ranker else self.spec
            save_adapter(model, spec, out, base_model=str(Path(cfg.model).resolve()),
                         projector_trained=self.train_projector)
            if self.ranker:
                self.ranker.write_history(self.out / "rank_history.json")
                plot_rank_history(self.out / "rank_history.json", self.out / "rank_history.png")
        elif cfg.stage == "full":
            out = save_like_input(model, cfg.model, out)  # the tower stayed frozen
        else:
            with atomic_dir(out) as tmp:
                save_projector(model, tmp / PROJECTOR_FILE)
        return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch's tensors on ``device`` (no copy when already there, e.g. on CPU)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _load_projector(model: MobileVLMForCausalLM, file: Path) -> None:
    if file.is_dir():
        file = file / PROJECTOR_FILE
    if not file.is_file():
        raise UserError("projector weights not found", path=file,
                        hint="pass OUT/projector/mm_projector.safetensors from a --stage pretrain run")
    load_projector(model, file)


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint, with the fields resume needs."""
    file = ckpt / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the checkpoint's state ({exc})", path=file,
                        hint="resume from an earlier checkpoint (delete this one) or start again with --overwrite") from exc
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("config"), dict)):
        raise UserError("is not a mobilepeft trainer state (needs 'step' and 'config')", path=file,
                        hint="resume from an earlier checkpoint (delete this one) or start again with --overwrite")
    return state


def _load_state(file: Path) -> Any:
    """A checkpoint's ``.pt`` state (optimizer, LR and rank schedules): checkpoint directories are
    moved between machines, so they are read without running code."""
    return load_plain(file, what="the checkpoint state",
                      refused_hint="resume only from checkpoints written by mobilepeft train; start again with --overwrite",
                      corrupt_hint="the file is truncated or corrupt; resume from an earlier checkpoint or start again")


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records a crashed run wrote after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in keep))
