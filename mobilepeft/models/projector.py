"""MobileVLM's Lightweight Downsample Projectors (LDP v1 and v2).

Submodule names reproduce the original implementation exactly so real checkpoints load
without key remapping (docs/training.md): v1 keys live under ``mm_projector.model.``, v2 keys
under ``mm_projector.mlp.mlp.*`` and ``mm_projector.peg.peg.0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` (timm's rule with round_limit=0)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def _tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"projector expects a square grid of patch tokens, got {n} tokens")
    return x.transpose(1, 2).reshape(b, c, g, g)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = _make_divisible(channels / 4)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """Depthwise conv -> LN -> Hardswish -> SE -> 1x1 conv -> LN (+ skip when stride 1)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                LayerNorm2d(channels, eps=1e-5),
                nn.Hardswish(),
            ),
            SqueezeExcite(channels),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), LayerNorm2d(channels, eps=1e-5)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.has_skip else out


class LDPBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(out_dim, 1), InvertedResidual(out_dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens_to_grid(self.mlp(x))
        x = self.mb_block(x)
        return x.flatten(2).transpose(1, 2)


class LDPNetProjector(nn.Module):
    """MobileVLM V1 projector (``mm_projector_type: ldpnet``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.model = LDPBlock(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FeatureIRLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PosInjectLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.peg(grid) + grid


class LDPNetV2Projector(nn.Module):
    """MobileVLM V2 projector (``mm_projector_type: ldpnetv2``): MLP, 2x average-pool, PEG."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = FeatureIRLayer(in_dim, out_dim)
        self.peg = PosInjectLayer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = _tokens_to_grid(self.mlp(x))
        if grid.shape[-1] % 2 == 0:
            # Equal to adaptive pooling to side/2 (windows [2i, 2i+2)); MobileVLM's grids (24, 8)
            # are even. Written as reshape + mean: exporters lower it with static shapes, and ORT's
            # AveragePool gradient mis-sizes a dynamic batch (on-device projector training). Batch
            # and channels share one axis because Core ML tensors have at most 5 dimensions.
            c, side = grid.shape[1], grid.shape[-1] // 2
            grid = grid.reshape(-1, side, 2, side, 2).mean((2, 4)).reshape(-1, c, side, side)
        else:
            side = (grid.shape[-1] + 1) // 2
            grid = F.adaptive_avg_pool2d(grid, (side, side))
        return self.peg(grid).flatten(2).transpose(1, 2)


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    if projector_type == "ldpnet":
        return LDPNetProjector(in_dim, out_dim)
    if projector_type == "ldpnetv2":
        return LDPNetV2Projector(in_dim, out_dim)
    raise ValueError(f"unknown projector type {projector_type!r}")
