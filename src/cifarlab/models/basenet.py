"""BaseNet from seed report 003 (CIFAR-100): a full-resolution residual CNN with ablation switches.

Conv stem 64 -> residual blocks 3/4/6/3 at widths 64/128/256/512, all at the input
resolution -> max-pool to 16x16 -> linear 50 -> ReLU -> linear classes -> batch norm.
`batch_norm`, `residual` and `residual_scale` (x = scale*f(x) + x) are the switches
the report's ablation study flips. Heavy by design (the report's choice): ~18 GFLOPs
per 32x32 image at full width; use `widths` for a lighter copy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU, plus the (projected) input when residual."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool, residual: bool, residual_scale: float):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm), norm(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batch_norm), norm(c_out), nn.ReLU())
        self.residual = residual
        self.scale = residual_scale
        self.project = nn.Conv2d(c_in, c_out, 1, bias=False) if residual and c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.scale * out + self.project(x) if self.residual else out


class BaseNet(nn.Module):
    def __init__(self, num_classes, in_channels, widths, depths, hidden, pool_size, batch_norm, residual,
                 residual_scale, logit_norm):
        super().__init__()
        stem_width = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=not batch_norm),
                                  nn.BatchNorm2d(stem_width) if batch_norm else nn.Identity(), nn.ReLU())
        blocks, c = [], stem_width
        for w, n in zip(widths, depths):
            for _ in range(n):
                blocks.append(ResBlock(c, w, batch_norm, residual, residual_scale))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool_size = pool_size
        self.fc1 = nn.Linear(c * pool_size * pool_size, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.logit_norm = nn.BatchNorm1d(num_classes) if logit_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        # 32 px -> 16 x 16 is the report's MaxPool2d(2); adaptive so 28 px inputs work too
        x = F.adaptive_max_pool2d(x, self.pool_size)
        return self.logit_norm(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))))


@register_model()
def basenet(num_classes: int = 100, in_channels: int = 3, widths: tuple = (64, 128, 256, 512),
            depths: tuple = (3, 4, 6, 3), hidden: int = 50, pool_size: int = 16, batch_norm: bool = True,
            residual: bool = True, residual_scale: float = 0.1, logit_norm: bool = True) -> nn.Module:
    """Report 003's BaseNet: full-resolution residual stages, switchable BN / residual / residual scale."""
    if len(widths) != len(depths):
        raise ValueError("widths and depths need the same length")
    return BaseNet(num_classes, in_channels, tuple(int(w) for w in widths), tuple(int(d) for d in depths),
                   hidden, pool_size, batch_norm, residual, residual_scale, logit_norm)
