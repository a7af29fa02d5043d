"""The process group a run belongs to: one process, or one of ``torchrun``'s workers.

``torchrun`` (single node, multi node, SLURM) exports ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`process_group` reads them, starts the group (NCCL on GPUs, gloo on CPU)
and hands out a :class:`Dist` whose collectives are plain pass-throughs in a single process.
Training code therefore has one path: a single process is a world of size 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mobilepeft.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # Objects travel pickled through the CPU-side (gloo or NCCL-object) path: they are small
    # (counts, sampled rows, RNG states), and CPU tensors unpickle on any rank.
    def all_gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_to_root(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_root else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Per-rank numbers summed over all ranks (one collective for the lot)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def average_grads(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of replicated parameters over the ranks, in one flat all-reduce.

        A parameter some ranks did not use (text-only batches leave the vision side out) counts
        as a zero gradient there, as in DDP; one no rank used keeps ``grad = None``.
        """
        if not self.active or not params:
            return
        seen = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [seen.to(params[0].dtype)])
        dist.all_reduce(flat)
        offset = 0
        for p, used in zip(params, flat[-len(params):].tolist(), strict=True):
            if used:
                p.grad = flat[offset:offset + p.numel()].view_as(p) / self.world
            offset += p.numel()

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if self.active:
            for t in tensors:
                dist.broadcast(t, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_environment() -> Dist:
    """Rank and world size as ``torchrun`` exports them. Without ``WORLD_SIZE`` this is a single
    process, whatever else the environment holds (``RANK`` alone is a common variable name)."""
    if "WORLD_SIZE" not in os.environ:
        return Dist()
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}",
                        hint="launch with torchrun, which sets them") from exc
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} is not in a WORLD_SIZE={world} world", hint="launch with torchrun")
    return Dist(rank, world, local_rank)


@contextlib.contextmanager
def process_group(env: Dist, device: torch.device) -> Iterator[Dist]:
    """Join the ``torchrun`` process group of ``env`` (from :func:`from_environment`) for the run's
    duration; nothing to join for one process.

    A group someone else started (a notebook, a launcher) is used as it is and left running.
    """
    if not env.active:
        yield env
        return
    if dist.is_initialized():
        yield Dist(dist.get_rank(), dist.get_world_size(), env.local_rank)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield env
    finally:
        dist.destroy_process_group()
