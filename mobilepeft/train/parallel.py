"""How the training step reaches the model across ``torchrun``'s processes.

- **DDP** (the default): every process holds the whole model; gradients of the trainable
  parameters are all-reduced in the backward of a step's last micro-batch.
- **FSDP2** (``--fsdp``): ``fully_shard`` on every LLM decoder layer and on the root shards the
  *frozen* base over the processes; the trainable parameters (adapters, projector) are left out
  of the sharding, stay replicated, and their gradients are averaged with one flat all-reduce.
  A rank schedule can then resize adapters in place as in one process. The CLIP tower belongs
  to the root unit, gathered on every rank each step: a text-only micro-batch skips the tower,
  and per-layer units there would leave the ranks' all-gathers out of step.

Either way a rank schedule's resize swaps parameter objects, so :meth:`ParallelModel.resized`
copies rank 0's new values and Adam moments to every rank and rebuilds DDP over them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from mobilepeft.distributed import Dist
from mobilepeft.models.mobilevlm import MobileVLMForCausalLM, VLMOutput


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers and the CLIP tower's encoder layers: what ``--compile`` compiles
    (each block one graph, reused by the blocks of the same shapes)."""
    return [m for m in model.modules() if isinstance(m, LlamaDecoderLayer | CLIPEncoderLayer)]


def compile_blocks(model: nn.Module) -> None:
    for block in transformer_blocks(model):
        block.compile()


def shard_frozen_base(model: MobileVLMForCausalLM, device: torch.device, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # the run's device type, not FSDP's default (CUDA whenever present, even for --device cpu)
    mesh = init_device_mesh(device.type, (world,))
    trainable = {p for p in model.parameters() if p.requires_grad}
    for block in model.llm.model.layers:  # run on every rank for every batch
        fully_shard(block, mesh=mesh, ignored_params=trainable & set(block.parameters()))
    fully_shard(model, mesh=mesh, ignored_params=trainable)
    register_fsdp_forward_method(model, "generate")  # evaluation decodes through generate()


class ParallelModel:
    """The model as the training loop calls it: plain, DDP-wrapped or FSDP-sharded."""

    def __init__(self, model: MobileVLMForCausalLM, dist: Dist, device: torch.device, *, fsdp: bool,
                 find_unused: bool) -> None:
        self.model, self.dist, self.device, self.find_unused = model, dist, device, find_unused
        self.fsdp = fsdp and dist.active
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.fsdp:
            shard_frozen_base(model, device, dist.world)
        elif dist.active:
            self.ddp = self._data_parallel(init_sync=True)

    def describe(self) -> str:
        """How the model is spread, for the run's first log line."""
        if not self.fsdp:
            return "DDP" if self.ddp is not None else "single process"
        from torch.distributed.tensor import DTensor

        held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in self.model.parameters())
        total = sum(p.numel() for p in self.model.parameters())
        return f"FSDP2, {held / 1e6:.2f}M of the model's {total / 1e6:.2f}M parameters held per process"

    def _data_parallel(self, init_sync: bool) -> nn.parallel.DistributedDataParallel:
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            forward_sync_buffers=False,  # the buffers (rotary frequencies, position ids) are constants
            find_unused_parameters=self.find_unused, init_sync=init_sync)

    def __call__(self, batch: dict[str, torch.Tensor]) -> VLMOutput:
        return (self.ddp or self.model)(batch["input_ids"], pixel_values=batch["pixel_values"],
                                        attention_mask=batch["attention_mask"], labels=batch["labels"])

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces in the backward of a step's last micro-batch only."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def reduce_gradients(self, params: list[nn.Parameter]) -> None:
        if self.fsdp:
            self.dist.average_grads(params)

    def resized(self, new_params: Iterable[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """After a rank schedule swapped in ``new_params``: rank 0's values and moments on every
        rank (each rank made the same resize; this keeps them bitwise equal), and a DDP that
        all-reduces the new parameters."""
        if not self.dist.active:
            return
        tensors = []
        for p in new_params:
            state = optimizer.state.get(p, {})
            tensors += [p.detach(), *(state[k] for k in ("exp_avg", "exp_avg_sq") if k in state)]
        self.dist.broadcast_tensors(tensors)
        if self.ddp is not None:
            self.ddp = self._data_parallel(init_sync=False)
