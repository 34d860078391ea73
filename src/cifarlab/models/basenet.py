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


class BaseNet(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, widths: tuple, depths: tuple, hidden: int,
                 pool_size: int, batch_norm: bool, residual: bool, residual_scale: float, logit_norm: bool):
        super().__init__()
        stem_width = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=not batch_norm),
                                  nn.BatchNorm2d(stem_width) if batch_norm else nn.Identity(), nn.ReLU())
        blocks, c = [], stem_width
        for w, n in zip(widths, depths):
            for _ in range(n):
                # conv-BN-ReLU-conv-BN-ReLU, plus the (projected) input when residual
                blocks.append(SubBlock(c, w, kernel_size=3, padding=1, bn="before_relu" if batch_norm else "none",
                                       double=True, residual=residual, residual_scale=residual_scale))
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
    return BaseNet(num_classes=num_classes, in_channels=in_channels, widths=tuple(int(w) for w in widths),
                   depths=tuple(int(d) for d in depths), hidden=hidden, pool_size=pool_size, batch_norm=batch_norm,
                   residual=residual, residual_scale=residual_scale, logit_norm=logit_norm)


class SubBlock(nn.Module):
    """Report 003's ablation unit: conv -> [BN] -> ReLU (or conv -> ReLU -> BN), twice when `double`,
    plus the (projected) input when residual: x_out = scale * f(x) + x."""

    def __init__(self, c_in: int, c_out: int, *, kernel_size: int, padding: int, bn: str, double: bool,
                 residual: bool, residual_scale: float):
        super().__init__()
        layers, c = [], c_in
        for _ in range(2 if double else 1):
            conv = nn.Conv2d(c, c_out, kernel_size, padding=padding, bias=bn == "none")
            norm = nn.BatchNorm2d(c_out) if bn != "none" else nn.Identity()  # same layer indices either way
            layers += [conv, norm, nn.ReLU()] if bn != "after_relu" else [conv, nn.ReLU(), norm]
            c = c_out
        self.body = nn.Sequential(*layers)
        self.residual, self.scale = residual, residual_scale
        self.project = nn.Conv2d(c_in, c_out, 1, bias=False) if residual and c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.scale * out + self.project(x) if self.residual else out


class BaseNetSteps(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, widths: tuple, kernel_size: int,
                 padding: str, pool_after: tuple, bn: str, double: bool, residual: bool, residual_scale: float,
                 fc_bn: bool, hidden: int):
        super().__init__()
        blocks, c, size = [], in_channels, image_size
        pad = kernel_size // 2 if padding == "same" else 0
        for i, w in enumerate(widths, start=1):
            blocks.append(SubBlock(c, w, kernel_size=kernel_size, padding=pad, bn=bn, double=double, residual=residual,
                                   residual_scale=residual_scale))
            size -= (kernel_size - 1 - 2 * pad) * (2 if double else 1)
            if size < 1:
                raise ValueError(f"{'valid' if not pad else 'these'} convolutions leave nothing of a "
                                 f"{image_size} px image by sub-block {i}; use padding=same")
            if i in pool_after:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        self.features = nn.Sequential(*blocks)
        self.fc1 = nn.Linear(c * size * size, hidden)
        self.fc1_norm = nn.BatchNorm1d(hidden) if fc_bn else nn.Identity()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc2(F.relu(self.fc1_norm(self.fc1(x))))


@register_model()
def basenet_steps(num_classes: int = 100, in_channels: int = 3, image_size: int = 32, widths: tuple = (6, 16),
                  kernel_size: int = 5, padding: str = "valid", pool_after: tuple = (1, 2), bn: str = "none",
                  double: bool = False,
                  residual: bool = False, residual_scale: float = 1.0, fc_bn: bool = False,
                  hidden: int = 50) -> nn.Module:
    """Report 003's ablation ladder: the course's starter BaseNet (conv 6 and 16, 5x5 valid, pool after each,
    linear 50) and the switches for each change the report made to it."""
    if padding not in ("valid", "same"):
        raise ValueError("padding must be valid (no padding, as the starter) or same")
    if bn not in ("none", "before_relu", "after_relu"):
        raise ValueError("bn must be none, before_relu (conv-BN-ReLU) or after_relu (conv-ReLU-BN)")
    widths = tuple(int(w) for w in widths)
    pool_after = tuple(int(p) for p in pool_after)
    if not widths or any(p < 1 or p > len(widths) for p in pool_after):
        raise ValueError(f"pool_after names sub-blocks 1..{len(widths)}; got {list(pool_after)}")
    return BaseNetSteps(num_classes=num_classes, in_channels=in_channels, image_size=image_size, widths=widths,
                        kernel_size=int(kernel_size), padding=padding, pool_after=pool_after, bn=bn, double=bool(double),
                        residual=bool(residual), residual_scale=float(residual_scale), fc_bn=bool(fc_bn),
                        hidden=int(hidden))
