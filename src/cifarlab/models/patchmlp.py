"""Patch MLP from seed report 004 (Fashion-MNIST): patches -> tokens -> alternating token/channel linears.

28x28 -> 4x4 patches -> 49 tokens of 16 values; stem linear 16 -> 256; batch norm over
tokens; then two blocks, each a pair of two-layer MLPs applied along one axis, a
transpose between them (mixing tokens, then features), batch norm, ReLU and dropout
(0.1, 0.2); a linear classifier on every row, averaged. Kaiming-uniform init, as the
report chose. Patch size and widths are options, so it also runs on 32x32x3.

The report's shape table lists a ReLU inside each MLP only, none after a block's batch norm:
norm_relu=False builds exactly that (the seed004 recipe does); the default keeps the ReLU after
the norm that earlier runs and checkpoints have. Where the dropouts act the table does not show:
dropout_at="block" after each block's norm, "hidden" after each ReLU inside its MLPs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Dropout, apply_init
from .registry import register_model


class MLP2(nn.Module):
    """Linear -> ReLU [-> dropout] -> Linear along the last axis."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)
        self.drop = Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class PatchMLP(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, patch_size: int, widths: tuple,
                 dropouts: tuple, head_pool: str = "mean", norm_relu: bool = True, dropout_at: str = "block"):
        super().__init__()
        if head_pool not in ("mean", "max"):
            raise ValueError("head_pool must be mean or max")
        if dropout_at not in ("block", "hidden"):
            raise ValueError("dropout_at must be block or hidden")
        self.head_pool, self.norm_relu = head_pool, bool(norm_relu)
        hidden1, hidden2 = (dropouts if dropout_at == "hidden" else (0.0, 0.0))
        block1, block2 = (dropouts if dropout_at == "block" else (0.0, 0.0))
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        d0, h1, d1, h2, d2, h3, d3, h4, d4 = widths
        tokens = (image_size // patch_size) ** 2
        self.patch_size, self.image_size = patch_size, image_size
        self.stem = nn.Linear(in_channels * patch_size ** 2, d0)
        self.norm0 = nn.BatchNorm1d(tokens)
        # (d0,T)->(d0,d1); (d1,d0)->(d1,d2)
        self.block1_a, self.block1_b = MLP2(tokens, h1, d1, hidden1), MLP2(d0, h2, d2, hidden1)
        self.norm1, self.drop1 = nn.BatchNorm1d(d1), Dropout(block1)
        # (d2,d1)->(d2,d3); (d3,d2)->(d3,d4)
        self.block2_a, self.block2_b = MLP2(d1, h3, d3, hidden2), MLP2(d2, h4, d4, hidden2)
        self.norm2, self.drop2 = nn.BatchNorm1d(d3), Dropout(block2)
        self.classifier = nn.Linear(d4, num_classes)
        apply_init(self, "kaiming_uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size:
            raise ValueError(f"patchmlp was built for {self.image_size} px images; got {x.shape[-1]} px "
                             f"(set model_args.image_size={x.shape[-1]})")
        p = self.patch_size
        patches = F.unfold(x, p, stride=p).transpose(1, 2)  # (N, tokens, C*p*p)
        t = self.norm0(self.stem(patches))  # (N, T, d0), BN over the T tokens
        t = self.block1_a(t.transpose(1, 2))  # (N, d0, d1)
        t = self.block1_b(t.transpose(1, 2))  # (N, d1, d2)
        t = self.drop1(self._after_norm(self.norm1(t)))
        t = self.block2_a(t.transpose(1, 2))  # (N, d2, d3)
        t = self.block2_b(t.transpose(1, 2))  # (N, d3, d4)
        t = self.drop2(self._after_norm(self.norm2(t)))
        logits = self.classifier(t)  # (N, d3, classes): one prediction per row; the report never says how
        return logits.mean(dim=1) if self.head_pool == "mean" else logits.amax(dim=1)  # they become one

    def _after_norm(self, t: torch.Tensor) -> torch.Tensor:
        return F.relu(t) if self.norm_relu else t


@register_model()
def patchmlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch_size: int = 4,
             widths: tuple = (256, 512, 256, 128, 64, 64, 128, 32, 16), dropouts: tuple = (0.1, 0.2),
             head_pool: str = "mean", norm_relu: bool = True, dropout_at: str = "block") -> nn.Module:
    """Report 004's patch MLP: 4x4 patches, token/feature-mixing linears with transposes, BN, dropout.
    norm_relu=False: no ReLU after each block's batch norm, as the report's table; dropout_at: block or hidden."""
    if len(widths) != 9 or len(dropouts) != 2:
        raise ValueError("widths needs 9 values (d0,h1,d1,h2,d2,h3,d3,h4,d4) and dropouts 2")
    return PatchMLP(num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                    widths=tuple(int(w) for w in widths), dropouts=tuple(float(d) for d in dropouts),
                    head_pool=head_pool, norm_relu=norm_relu, dropout_at=dropout_at)
