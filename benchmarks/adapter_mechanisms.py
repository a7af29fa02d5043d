"""Which way to keep an adapter replaceable in an ExecuTorch program (docs/on-device-loop.md, "Why
named data in a .ptd"): the per-call cost of each mechanism, measured on the adapter alone.

A program holds ``--modules`` LoRA blocks ``x + ((x @ Aᵀ) @ Bᵀ) * s`` at one decode step (one
token), sized like MobileVLM-1.7B's adapter by default (168 adapted linears of 2048 -> r 8 ->
2048, 336 tensors). Lowered with XNNPACK and run through ExecuTorch's Python bindings:

* ``named_data``: the tensors are named constants in a ``.ptd`` (what ``--adapter-as-data`` does),
  kept out of XNNPACK so a swap reaches them; the program reads them through its pointers;
* ``method_inputs``: the tensors are inputs of the method, passed on every call (ExecuTorch PR
  #19953's approach for text LoRA); XNNPACK may take the matmuls, since nothing is constant;
* ``merged_constants``: the same tensors as ordinary constants packed by XNNPACK (not replaceable:
  the reference for what the math itself costs).

Mutable buffers are not measured: they are read like constants, so a call costs what
``named_data`` costs, and their values live in the ``.pte``, which is what the adapter file avoids.

    python benchmarks/adapter_mechanisms.py        # ~1 min on 2 cores

Writes docs/results/adapter_mechanisms.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, write_result
from torch import nn

from mobilepeft.export.executorch.adapter_data import (
    tag_adapter_constants,
    xnnpack_partitioner_sparing_adapter,
)


class Blocks(nn.Module):
    """``modules`` LoRA blocks whose tensors are buffers named like the exporter's adapter constants."""

    def __init__(self, modules: int, dim: int, rank: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList()
        for _ in range(modules):
            block = nn.Module()
            block.register_buffer("lora_a_t", torch.randn(dim, rank, generator=g) * 0.02)
            block.register_buffer("lora_b_t", torch.randn(rank, dim, generator=g) * 0.02)
            self.blocks.append(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + torch.matmul(torch.matmul(x, block.lora_a_t), block.lora_b_t) * 2.0
        return x


class BlocksFromInputs(nn.Module):
    """The same computation with every adapter tensor a method input."""

    def forward(self, x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        for a_t, b_t in zip(tensors[0::2], tensors[1::2], strict=True):
            x = x + torch.matmul(torch.matmul(x, a_t), b_t) * 2.0
        return x


def lower(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: Path, mechanism: str) -> tuple[Path, Path | None]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    program = torch.export.export(module, inputs, strict=False)
    partitioner = xnnpack_partitioner_sparing_adapter() if mechanism == "named_data" else XnnpackPartitioner()
    edge = to_edge_transform_and_lower(program, partitioner=[partitioner])
    config = ExecutorchBackendConfig(external_constants=tag_adapter_constants) if mechanism == "named_data" \
        else ExecutorchBackendConfig()
    et = edge.to_executorch(config)
    pte = out / f"{mechanism}.pte"
    pte.write_bytes(et.buffer)
    ptd = None
    if mechanism == "named_data":
        et.write_tensor_data_to_file(str(out))
        ptd = next(out.glob("*.ptd"))
    return pte, ptd


def time_calls(method, inputs: list[torch.Tensor], calls: int, repeats: int) -> dict[str, float]:
    """Median (min, max) over ``repeats`` of the mean time of ``calls`` executions, in microseconds."""
    method.execute(inputs)
    means = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            method.execute(inputs)
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return {"us_per_call": statistics.median(means), "us_min": min(means), "us_max": max(means)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", type=int, default=168, help="adapted linears (MobileVLM-1.7B: 7 x 24)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--output", type=Path, default=RESULTS / "adapter_mechanisms.json")
    args = ap.parse_args()
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    blocks = Blocks(args.modules, args.dim, args.rank).eval()
    tensors = [t for b in blocks.blocks for t in (b.lora_a_t, b.lora_b_t)]
    x = torch.randn(1, 1, args.dim)
    expected = blocks(x)
    runtime = Runtime.get()
    result: dict[str, Any] = {"modules": args.modules, "dim": args.dim, "rank": args.rank, "tokens": 1,
                              "calls": args.calls, "repeats": args.repeats, "mechanisms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mechanism in ("named_data", "method_inputs", "merged_constants"):
            out = Path(tmp) / mechanism
            out.mkdir()
            module, inputs = (BlocksFromInputs(), (x, *tensors)) if mechanism == "method_inputs" else (blocks, (x,))
            pte, ptd = lower(module, inputs, out, mechanism)
            program = runtime.load_program(pte, data_path=ptd)
            method = program.load_method("forward")
            got = method.execute(list(inputs))[0]
            figures = time_calls(method, list(inputs), args.calls, args.repeats)
            figures["max_abs_diff"] = float((got - expected).abs().max())
            figures["pte_bytes"] = pte.stat().st_size
            figures["ptd_bytes"] = ptd.stat().st_size if ptd else 0
            result["mechanisms"][mechanism] = figures
            print(f"{mechanism:18}{figures['us_per_call']:10.0f} us/call  (max |diff| {figures['max_abs_diff']:.1e})",
                  flush=True)
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
