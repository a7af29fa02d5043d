"""The training recipe, torchtune style: setup builds the run's state once (model, data, rank
schedule, optimizer, resume point), a short explicit loop takes the optimizer steps, and a finish
writes what the stage produces. Metrics go to the sinks of :mod:`mobilepeft.train.metrics`.

Exact resume: the batch order is a pure function of (seed, epoch), dropout is seeded per
micro-batch, and every checkpoint stores the trainable tensors, optimizer, LR schedule and rank
schedule, so ``--resume`` after a crash yields the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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
from mobilepeft.distributed import Dist, from_environment, process_group
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
from mobilepeft.train.config import OptimSettings, TrainConfig
from mobilepeft.train.evaluate import evaluate
from mobilepeft.train.metrics import Sinks, check_tracker, open_sinks
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


@dataclass
class _Run:
    """What setup builds for one run. The step loop reads it, checkpoints save its optimizer,
    schedules and trained tensors, and the Trainer keeps it so that callbacks (and callers, once
    ``run`` returns) reach the model and the rank schedule."""

    dist: Dist
    device: torch.device
    model: MobileVLMForCausalLM
    parallel: ParallelModel
    train_ds: SupervisedDataset
    eval_ds: SupervisedDataset | None
    #: samples --skip-bad-samples left out, training and evaluation sets together
    skipped: list[str]
    #: micro-batches per optimizer step over all processes: what fixes the maths
    micro_per_step: int
    total_steps: int
    #: optimizer steps already done: the resumed checkpoint's, 0 for a fresh run
    start: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ranker: RankScheduler | None
    #: what checkpoints hold: every parameter the optimizer owns, even while frozen for a stage
    trainable_names: list[str]
    #: the parameter group whose learning rate is --lr (logged, and seen by the rank schedule);
    #: DMLoRA's learning scalars and the projector may run at other rates
    main_group: int
    sink: Sinks


class Trainer:
    """``mobilepeft train``: :meth:`run` sets everything up (:meth:`_setup`), runs the step loop
    (:meth:`_train`) and writes the outputs (:meth:`_finish`).

    ``callbacks`` are called as ``callback(trainer, step, record)`` after every optimizer step,
    with the step's metrics record; ``trainer.model`` is the model being trained.
    """

    def __init__(self, cfg: TrainConfig, *, progress: bool = True,
                 callbacks: list[Callable[[Trainer, int, dict[str, Any]], None]] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.callbacks = callbacks or []
        self.out = Path(cfg.output.dir)
        self.ckpt_root = self.out / "checkpoints"
        #: the run in progress, or the last one (None before run())
        self._state: _Run | None = None

    @property
    def model(self) -> MobileVLMForCausalLM:
        """The model being trained (callbacks), or trained (after :meth:`run`)."""
        return self._current().model

    @property
    def ranker(self) -> RankScheduler | None:
        """The run's rank schedule; None when the ranks are fixed."""
        return self._current().ranker

    def _current(self) -> _Run:
        if self._state is None:
            raise RuntimeError("Trainer.run() loads the model; nothing is loaded yet")
        return self._state

    def run(self) -> TrainResult:
        """Train as configured; under torchrun every process calls it and rank 0 writes the files."""
        env = from_environment()
        device = self.cfg.torch_device(env.local_rank, env.world)
        with process_group(env, device) as dist:
            result = self._run(dist, device)
            dist.barrier()  # rank 0's outputs exist when any rank returns
            return result

    def _run(self, dist: Dist, device: torch.device) -> TrainResult:
        check_tracker(self.cfg.output.report_to)
        run = self._state = self._setup(dist, device)
        with contextlib.closing(run.sink):
            eval_before = None
            if run.eval_ds is not None and run.start == 0:
                self._say(dist, f"evaluating before training ({len(run.eval_ds)} samples)")
                eval_before = self._evaluate(run, 0)
            loss = self._train(run)
            return self._finish(run, loss, eval_before)

    # --- setup ---------------------------------------------------------------------------
    def _setup(self, dist: Dist, device: torch.device) -> _Run:
        """Model, data, rank schedule, optimizer and resume state, in the order resume needs: a
        checkpoint's ranks give the adapters their shapes before the optimizer sees them, then
        its tensors and optimizer state load into both. Rank 0 replaces the run directory only
        once the model and data have loaded."""
        cfg = self.cfg
        self._claim_run_dir(dist)
        self._say(dist, f"loading the model from {cfg.model.path}")
        model = self._setup_model(device)
        train_ds, eval_ds, skipped = self._setup_data(model)
        micro = cfg.micro_batches_per_step(dist.world)
        micro_per_epoch = math.ceil(len(train_ds) / cfg.optim.batch_size)
        total_steps = cfg.optim.max_steps or max(1, math.ceil(cfg.optim.epochs * micro_per_epoch / micro))
        resume_from = self._resume_checkpoint(micro, dist.world) if cfg.output.resume else None
        ranker = self._setup_ranker(model, total_steps, dist, resume_from)
        optimizer, trainable_names, main_group = self._setup_optimizer(model)
        warmup = int(cfg.optim.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup, total_steps))
        if dist.is_root:
            self._start_run_dir()
        start = 0 if resume_from is None else self._restore(resume_from, model, optimizer, scheduler, trainable_names)
        if dist.is_root:
            write_text(self.out / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        parallel = self._setup_parallel(model, train_ds, dist, device, micro)
        return _Run(dist=dist, device=device, model=model, parallel=parallel, train_ds=train_ds, eval_ds=eval_ds,
                    skipped=skipped, micro_per_step=micro, total_steps=total_steps, start=start, optimizer=optimizer,
                    scheduler=scheduler, ranker=ranker, trainable_names=trainable_names, main_group=main_group,
                    sink=open_sinks(self.out, cfg.output.report_to, start, root=dist.is_root))

    def _setup_model(self, device: torch.device) -> MobileVLMForCausalLM:
        cfg = self.cfg
        torch.manual_seed(cfg.optim.seed)
        model = load_vlm(cfg.model.path)
        if cfg.model.projector:
            _load_projector(model, Path(cfg.model.projector))
        if cfg.model.stage == "finetune":
            inject_adapters(model, cfg.adapter)
            for p in adapter_parameters(model).values():
                p.requires_grad_(True)
        elif cfg.model.stage == "full":
            model.llm.requires_grad_(True)
            model.vision_tower.requires_grad_(cfg.model.train_vision_tower)
        model.mm_projector.requires_grad_(_trains_projector(cfg))
        if cfg.optim.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.to(device)

    def _setup_data(self, model: MobileVLMForCausalLM) -> tuple[SupervisedDataset, SupervisedDataset | None, list[str]]:
        """The training set, the evaluation set (None without --eval-data) and the skipped samples of both."""
        data = self.cfg.data
        train_ds, skipped = self._dataset(model, data.path, data.image_folder)
        if not data.eval_data:
            return train_ds, None, skipped
        eval_ds, eval_skipped = self._dataset(model, data.eval_data, data.eval_image_folder or data.image_folder)
        return train_ds, eval_ds, skipped + eval_skipped

    def _dataset(self, model: MobileVLMForCausalLM, json_path: str, image_folder: str) -> tuple[SupervisedDataset, list[str]]:
        data = self.cfg.data
        convs, skipped = load_llava(json_path, image_folder, skip_bad=data.skip_bad_samples)
        ds = SupervisedDataset(convs, model.tokenizer, image_folder, model.config.image_size,
                               model.config.num_image_tokens, data.max_length, skip_bad=data.skip_bad_samples)
        return ds, skipped + ds.skipped

    def _setup_ranker(self, model: MobileVLMForCausalLM, total_steps: int, dist: Dist,
                      resume_from: Path | None) -> RankScheduler | None:
        cfg = self.cfg
        if cfg.model.stage != "finetune" or cfg.schedule.kind == "fixed":
            return None
        ranker = RankScheduler(model, cfg.schedule, total_steps, dist, seed=cfg.optim.seed)
        self._say(dist, f"{cfg.schedule.kind} rank schedule: the first {cfg.schedule.probe_steps} batches probe "
                        "each module's sensitivity before ranks are allocated")
        if resume_from is not None:  # the checkpoint's ranks (shapes) before the optimizer sees them
            ranker.load_state_dict(_load_state(resume_from / "rank_schedule.pt"))
        return ranker

    def _setup_optimizer(self, model: MobileVLMForCausalLM) -> tuple[torch.optim.Optimizer, list[str], int]:
        """AdamW with one group per learning rate: adapters, adapter parameters with their own LR
        multiplier (DMLoRA's learning scalar, no weight decay), and the projector. Returns it with
        :attr:`_Run.trainable_names` and :attr:`_Run.main_group`."""
        optim = self.cfg.optim
        multipliers = lr_multipliers(model) if self.cfg.model.stage == "finetune" else {}
        groups: dict[tuple[float, float], list[tuple[str, torch.nn.Parameter]]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault(_group_key(name, multipliers, optim), []).append((name, p))
        if not groups:
            raise UserError("nothing to train: no adapter targets and the projector is frozen",
                            hint="use --train-projector or --stage finetune with --target-modules")
        optimizer = torch.optim.AdamW([{"params": [p for _, p in named], "lr": lr, "weight_decay": wd}
                                       for (lr, wd), named in groups.items()], betas=(0.9, 0.999), eps=1e-8)
        names = [n for named in groups.values() for n, _ in named]
        main_group = next((i for i, (lr, _) in enumerate(groups) if lr == optim.lr), 0)
        return optimizer, names, main_group

    def _setup_parallel(self, model: MobileVLMForCausalLM, train_ds: SupervisedDataset, dist: Dist,
                        device: torch.device, micro: int) -> ParallelModel:
        optim = self.cfg.optim
        if optim.compile:
            compile_blocks(model)
        # Text-only samples leave the vision side (projector, tower adapters) out of the graph.
        parallel = ParallelModel(model, dist, device, fsdp=optim.fsdp,
                                 find_unused=any(c.image is None for c in train_ds.conversations))
        if optim.fsdp and not dist.active:
            print("--fsdp: a single process, nothing to shard (launch with torchrun)", file=sys.stderr, flush=True)
        if dist.active and dist.is_root:
            print(f"torchrun: {dist.world} processes, {parallel.describe()} on {device.type}; global batch "
                  f"{micro * optim.batch_size} = {dist.world} x {micro // dist.world} micro-batches x "
                  f"{optim.batch_size}", file=sys.stderr, flush=True)
        return parallel

    def _claim_run_dir(self, dist: Dist) -> None:
        """Rank 0 checks --output-dir (mobilepeft/outputs.py) before anything is loaded; every rank
        stops on its refusal."""
        cfg, refusal = self.cfg, None
        if dist.is_root:
            try:
                claim_output_dir(self.out, "run", overwrite=cfg.output.overwrite, resume=cfg.output.resume,
                                 inputs=(cfg.model.path, cfg.data.path, cfg.data.eval_data, cfg.data.image_folder,
                                         cfg.data.eval_image_folder, cfg.model.projector))
            except UserError as err:
                refusal = err.render()
        refusal = dist.broadcast(refusal)
        if refusal:
            raise UserError(refusal)

    def _start_run_dir(self) -> None:
        """A fresh run replaces the claimed directory (empty, or a previous run with --overwrite)
        only now that the model and data have loaded, so a refused input leaves it as it was."""
        if self.cfg.output.resume:
            clean_stale_temporaries(self.ckpt_root)
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        write_marker(self.out, "run")

    # --- the step loop -------------------------------------------------------------------
    def _train(self, run: _Run) -> float:
        """Every optimizer step, then on their own cadences its metrics record, an evaluation and
        a checkpoint, then the callbacks. Returns the last step's loss."""
        out = self.cfg.output
        micro_batches = self._micro_batches(run)
        layers = list(adapter_layers(run.model).values())  # resizes swap parameters, never layers
        progress = _Progress(self.progress and run.dist.is_root, run.start, run.total_steps)
        if run.ranker and run.start == 0:  # a resumed run logged them when it first started
            run.sink.log_ranks(0, run.ranker.ranks())
        run.model.train()
        loss, t_last, samples_since = float("nan"), time.perf_counter(), 0
        for step in range(run.start, run.total_steps):
            set_progress(layers, step, run.total_steps)
            record, samples = self._step(run, step, micro_batches)
            loss, done, samples_since = record["loss"], record["step"], samples_since + samples
            if _every(out.log_every, done) or done == run.total_steps:
                now = time.perf_counter()
                record["samples_per_s"] = samples_since / max(now - t_last, 1e-9)
                t_last, samples_since = now, 0
                run.sink.log(record)
            progress.update(record)
            if run.eval_ds is not None and _every(out.eval_every, done) and done != run.total_steps:
                self._evaluate(run, done)
            if _every(out.save_every, done):
                self._checkpoint(run, done)
            for callback in self.callbacks:
                callback(self, done, record)
        progress.close()
        return loss

    def _micro_batches(self, run: _Run) -> Iterator[dict[str, Any]]:
        """This process's micro-batches from the resume point on, on the run's device."""
        optim, data = self.cfg.optim, self.cfg.data
        micro = run.micro_per_step
        sampler = ResumableBatchSampler(len(run.train_ds), optim.batch_size, optim.seed, run.start * micro,
                                        run.total_steps * micro, run.dist.rank, run.dist.world)
        on_gpu = run.device.type == "cuda"
        workers = data.num_workers if data.num_workers is not None else (4 if on_gpu else 0)
        # A private generator: DataLoader would otherwise draw its worker base seed from the global RNG.
        loader = DataLoader(run.train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=on_gpu,
                            collate_fn=partial(collate_batch, pad_id=run.model.tokenizer.pad_id),
                            generator=torch.Generator().manual_seed(optim.seed))
        return _seeded(sampler.micro_batches(), iter(loader), optim.seed, run.device)

    def _step(self, run: _Run, step: int, micro_batches: Iterator[dict[str, Any]]) -> tuple[dict[str, Any], int]:
        """Optimizer step ``step`` (0-based) over every process's micro-batches: gradients reduced
        and clipped, AdamW and the LR schedule stepped, then the rank schedule's turn. Returns the
        step's metrics record and the samples all processes took."""
        dist = run.dist
        local_loss, local_samples, tap = self._accumulate(run, step, micro_batches)
        params = _parameters(run.optimizer)  # resizes swap parameters: ask the optimizer each step
        run.parallel.reduce_gradients(params)
        if run.ranker:
            run.ranker.after_backward(step, tap)
        loss, samples = dist.all_sum([local_loss / dist.world, local_samples], run.device)
        if not math.isfinite(loss):
            raise self._diverged(f"the loss became {loss} at step {step + 1}")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm))
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        lr = run.scheduler.get_last_lr()[run.main_group]
        record: dict[str, Any] = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        if run.ranker and run.ranker.after_step(step, loss, run.optimizer, lr):
            record["rank_moves"] = self._resized(run, params, step + 1)
        return record, int(samples)

    def _accumulate(self, run: _Run, step: int,
                    micro_batches: Iterator[dict[str, Any]]) -> tuple[float, int, Any]:
        """Forward and backward of this process's micro-batches of ``step``, the rank schedule's
        tap recording them on the steps it watches. Returns their mean loss, their samples and
        the tap."""
        accum = run.micro_per_step // run.dist.world
        autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=self.cfg.optim.precision == "bf16")
        loss, samples = 0.0, 0
        with run.ranker.tap(step) if run.ranker else contextlib.nullcontext() as tap:
            for j in range(accum):
                batch = next(micro_batches)
                with run.parallel.accumulating(last=j == accum - 1), autocast:
                    out = run.parallel(batch)
                    (out.loss / accum).backward()
                loss += float(out.loss.detach()) / accum
                samples += batch["input_ids"].shape[0]
        return loss, samples, tap

    def _resized(self, run: _Run, old_params: list[torch.nn.Parameter], step: int) -> int:
        """After the rank schedule reallocated at ``step``: every process holds rank 0's new
        tensors, and the history file and trackers show the new ranks. Returns the moves made."""
        old = set(map(id, old_params))
        run.parallel.resized([p for p in _parameters(run.optimizer) if id(p) not in old], run.optimizer)
        if run.dist.is_root:
            run.ranker.write_history(self.out / "rank_history.json")
        run.sink.log_ranks(step, run.ranker.ranks())
        return len(run.ranker.history[-1].moves)

    def _evaluate(self, run: _Run, step: int) -> dict[str, float]:
        """Score the evaluation set and log it as of ``step``. Every rank evaluates the whole set
        (FSDP's collectives need all of them in step; the sets are validation-sized); the numbers
        are the same on every rank."""
        scores = evaluate(run.model, run.eval_ds, batch_size=self.cfg.output.eval_batch_size,
                          max_new_tokens=self.cfg.output.eval_max_new_tokens)
        run.sink.log({"step": step, "eval_loss": scores["loss"], "eval_accuracy": scores["accuracy"]})
        return scores

    def _checkpoint(self, run: _Run, step: int) -> None:
        state = self._finite_state(run, step)  # on every rank: a refusal stops them all
        if run.dist.is_root:
            self._save_checkpoint(run, state, step)

    def _finish(self, run: _Run, loss: float, eval_before: dict[str, float] | None) -> TrainResult:
        """The evaluation after training, what the stage produces, and a checkpoint of the last
        step unless the loop just wrote it."""
        eval_after = None
        if run.eval_ds is not None:
            self._say(run.dist, f"evaluating after training ({len(run.eval_ds)} samples)")
            eval_after = self._evaluate(run, run.total_steps)
        run.model.eval()
        state = self._finite_state(run, run.total_steps)
        adapter_dir = self._save_outputs(run) if run.dist.is_root else self._output_dir()
        last = self.latest_checkpoint()
        if run.dist.is_root and (last is None or int(last.name.split("-")[1]) != run.total_steps):
            self._save_checkpoint(run, state, run.total_steps)
        return TrainResult(self.out, adapter_dir, run.total_steps, loss, eval_before, eval_after, run.skipped)

    # --- checkpoints ---------------------------------------------------------------------
    def _finite_state(self, run: _Run, step: int) -> dict[str, torch.Tensor]:
        """The trainable tensors, refused if any holds NaN/inf: such a state is never written."""
        params = dict(run.model.named_parameters())
        state = {n: params[n].detach().cpu() for n in run.trainable_names}
        bad = [n for n, t in state.items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise self._diverged(f"{len(bad)} trained tensors hold NaN/inf after step {step} (first: {bad[0]})")
        return state

    def _diverged(self, what: str) -> TrainingDiverged:
        last = self.latest_checkpoint()
        kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint was written"
        optim = self.cfg.optim
        bf16 = "; or train with --precision fp32" if optim.precision == "bf16" else ""
        return TrainingDiverged(
            f"{what}: training stopped and nothing non-finite was saved; {kept}",
            hint=f"start again with a lower learning rate, e.g. --lr {optim.lr / 10:g} --overwrite{bf16} "
                 "(--resume would repeat the same steps and diverge again)")

    def _save_checkpoint(self, run: _Run, state: dict[str, torch.Tensor], step: int) -> Path:
        """Write ``state`` (from :meth:`_finite_state`, which every rank runs) with the optimizer,
        LR schedule and rank schedule of ``step``."""
        path = self.ckpt_root / f"step-{step:07d}"
        with atomic_dir(path) as tmp:
            save_safetensors(state, tmp / "trainable.safetensors")
            # No RNG states: dropout is seeded per micro-batch (micro_batch_seed), the schedule
            # keeps its own generator in rank_schedule.pt.
            torch_save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()},
                       tmp / "optimizer.pt")
            write_json(tmp / "trainer_state.json", {"step": step, "micro_batches_per_step": run.micro_per_step,
                                                    "world_size": run.dist.world, "config": self.cfg.to_flat()})
            if run.ranker is not None:
                torch_save(run.ranker.state_dict(), tmp / "rank_schedule.pt")
        for old in sorted(self.ckpt_root.glob("step-*"))[: -self.cfg.output.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _resume_checkpoint(self, micro_per_step: int, world: int) -> Path:
        """The checkpoint --resume continues from, refused when this run's settings or global
        batch differ from the checkpoint's."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise UserError("--resume: no checkpoint found", path=self.ckpt_root,
                            hint="run without --resume to start from scratch")
        state = read_trainer_state(ckpt)
        saved, now = state["config"], self.cfg.to_flat()
        diff = [k for k in now if k not in TrainConfig.RESUME_FREE and saved.get(k) != now[k]]
        if diff:
            k = diff[0]
            raise UserError(f"--resume with a different setting: {k} was {saved.get(k)!r}, now {now[k]!r}",
                            path=ckpt / "trainer_state.json", field=k,
                            hint="resume with the original options, or use a new --output-dir")
        micro = state.get("micro_batches_per_step", saved["grad_accum"])
        if micro != micro_per_step:
            b = self.cfg.optim.batch_size
            raise UserError(
                f"--resume with a different global batch: the checkpoint took {micro} micro-batches of {b} per step "
                f"(global batch {micro * b}, {state.get('world_size', 1)} process(es)); {world} process(es) with these "
                f"options take {micro_per_step}", path=ckpt / "trainer_state.json", field="grad_accum",
                hint=f"pass --global-batch-size {micro * b}" + (f" (or --grad-accum {micro // world})"
                                                                  if micro % world == 0 else ""))
        return ckpt

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_root.glob("step-*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    def _restore(self, ckpt: Path, model: MobileVLMForCausalLM, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LambdaLR, trainable_names: list[str]) -> int:
        """Load ``ckpt``'s trained tensors, optimizer and LR schedule; returns its step."""
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
        unknown = sorted(set(tensors) - set(trainable_names))
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

    # --- outputs -------------------------------------------------------------------------
    def _say(self, dist: Dist, what: str) -> None:
        """One line per long phase on stderr, so a piped or logged run is never silent for minutes."""
        if self.progress and dist.is_root:
            print(f"{what} ...", file=sys.stderr, flush=True)

    def _output_dir(self) -> Path:
        """What the stage produces: adapter/ (finetune), model/ (full) or projector/ (pretrain)."""
        return self.out / {"finetune": "adapter", "full": "model", "pretrain": "projector"}[self.cfg.model.stage]

    def _save_outputs(self, run: _Run) -> Path:
        cfg, out, ranker = self.cfg, self._output_dir(), run.ranker
        if cfg.model.stage == "finetune":
            spec = ranker.final_spec(cfg.adapter) if ranker else cfg.adapter
            save_adapter(run.model, spec, out, base_model=str(Path(cfg.model.path).resolve()),
                         projector_trained=_trains_projector(cfg))
            if ranker:
                ranker.write_history(self.out / "rank_history.json")
                plot_rank_history(self.out / "rank_history.json", self.out / "rank_history.png")
        elif cfg.model.stage == "full":
            out = save_like_input(run.model, cfg.model.path, out, tower_changed=cfg.model.train_vision_tower)
        else:
            with atomic_dir(out) as tmp:
                save_projector(run.model, tmp / PROJECTOR_FILE)
        return out


class _Progress:
    """Progress on stderr: a live bar on a terminal; in logs (CI, nohup) a plain line every ~10%
    of the run instead of carriage-return spam."""

    def __init__(self, enabled: bool, start: int, total: int) -> None:
        interactive = enabled and sys.stderr.isatty()
        self.total = total
        self.plain_every = max(1, total // 10) if enabled and not interactive else 0
        self.bar = tqdm(total=total, initial=start, disable=not interactive, desc="train", unit="step",
                        dynamic_ncols=True, mininterval=0.5)

    def update(self, record: dict[str, Any]) -> None:
        """After a step; a logged record (one with ``samples_per_s``) refreshes the bar's numbers."""
        done, loss, lr = record["step"], record["loss"], record["lr"]
        if "samples_per_s" in record:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{record['samples_per_s']:.1f}")
        self.bar.update(1)
        if self.plain_every and (done % self.plain_every == 0 or done == self.total):
            print(f"step {done}/{self.total}  loss {loss:.4f}  lr {lr:.2e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _seeded(ids: Iterable[int], batches: Iterator[dict[str, Any]], seed: int,
            device: torch.device) -> Iterator[dict[str, Any]]:
    """``batches`` on ``device``, the global RNG seeded for each from its micro-batch index
    first, so dropout (and DMLoRA's branch drop) is the same on any number of ranks and after
    ``--resume``."""
    for k in ids:
        torch.manual_seed(micro_batch_seed(seed, k))
        yield to_device(next(batches), device)


def _every(n: int, step: int) -> bool:
    """Whether an ``--x-every n`` action falls on ``step`` (never for n = 0)."""
    return n > 0 and step % n == 0


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _trains_projector(cfg: TrainConfig) -> bool:
    return cfg.model.stage == "pretrain" or cfg.model.train_projector


def _group_key(name: str, multipliers: dict[str, float], optim: OptimSettings) -> tuple[float, float]:
    """(learning rate, weight decay) of parameter ``name``."""
    if name.startswith("mm_projector."):
        return optim.projector_lr or optim.lr, optim.weight_decay
    if name in multipliers:
        return optim.lr * multipliers[name], 0.0
    return optim.lr, optim.weight_decay


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
