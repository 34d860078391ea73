"""Dynamic "mix K convolutions" CNNs from seed reports 000, 001 and 002.

A MixConv2d layer pools its input, predicts K mixing weights per sample (softmax with
a temperature) and outputs the weighted sum of K convolutions. Because convolution is
linear in its weights, sum_k a_k * conv(x, W_k) == conv(x, sum_k a_k W_k): the fast
path builds one kernel per sample and runs ONE grouped convolution (groups = batch);
`forward_reference` keeps the literal K-convolution form for testing.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import apply_init
from .registry import register_model

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "leakyrelu": lambda: nn.LeakyReLU(0.1), "gelu": nn.GELU}


class MixConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 4, kernel_size: int = 3, stride: int = 1,
                 temperature: float = 1.0, bias: bool = True):
        super().__init__()
        self.k, self.stride, self.padding, self.temperature = k, stride, kernel_size // 2, temperature
        self.weight = nn.Parameter(torch.empty(k, c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(k, c_out)) if bias else None
        self.router = nn.Linear(c_in, k)
        for i in range(k):  # each expert starts like an ordinary conv layer
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))

    def expert_weights(self):
        """The K kernels one by one (so named inits treat each like an ordinary conv weight)."""
        return [self.weight[i] for i in range(self.k)]

    def mixing(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) softmax weights predicted from the globally pooled input."""
        return torch.softmax(self.router(x.mean(dim=(2, 3))) / self.temperature, dim=1)

    # below this many output pixels per map, K ordinary filters in one wide conv (then a per-sample weighted
    # sum of the K outputs) beat building per-sample kernels: those cost K*C_out*C_in*k*k per sample to
    # build and run as a grouped conv that CPUs execute poorly, for very little conv work on a tiny map
    WIDE_BELOW_PIXELS = 100

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] < self.WIDE_BELOW_PIXELS:
            return self.forward_wide(x)
        return self.forward_grouped(x)

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """One kernel per sample (the K kernels mixed), all samples in ONE grouped convolution."""
        n, c_in, h, w = x.shape
        a = self.mixing(x)
        kernels = torch.einsum("nk,koihw->noihw", a.to(self.weight.dtype), self.weight)
        kernels = kernels.reshape(-1, c_in, *self.weight.shape[-2:]).to(x.dtype)
        bias = (a @ self.bias).reshape(-1).to(x.dtype) if self.bias is not None else None
        out = F.conv2d(x.reshape(1, n * c_in, h, w), kernels, bias, self.stride, self.padding, groups=n)
        return out.reshape(n, -1, out.shape[-2], out.shape[-1])

    def forward_bmm(self, x: torch.Tensor) -> torch.Tensor:
        """One kernel per sample applied as ONE batched matrix product over unfolded patches: the mixed
        kernel's FLOPs only, as GEMMs (which CPUs run near their peak), at the price of an im2col copy."""
        n, c_in, h, w = x.shape
        kh, kw = self.weight.shape[-2:]
        a = self.mixing(x)
        kernels = torch.einsum("nk,koihw->noihw", a.to(self.weight.dtype), self.weight)
        kernels = kernels.reshape(n, kernels.shape[1], -1).to(x.dtype)  # (N, C_out, C_in*kh*kw)
        cols = F.unfold(x, (kh, kw), padding=self.padding, stride=self.stride)  # (N, C_in*kh*kw, L)
        out = torch.bmm(kernels, cols)
        h_out = (h + 2 * self.padding - kh) // self.stride + 1
        w_out = (w + 2 * self.padding - kw) // self.stride + 1
        out = out.view(n, -1, h_out, w_out)
        if self.bias is not None:
            out = out + (a @ self.bias).to(x.dtype)[:, :, None, None]
        return out

    def forward_wide(self, x: torch.Tensor) -> torch.Tensor:
        """All K convolutions as one conv with K*C_out filters, then the per-sample weighted sum."""
        a = self.mixing(x)
        k, c_out = self.weight.shape[:2]
        weight = self.weight.reshape(k * c_out, *self.weight.shape[2:])
        bias = self.bias.reshape(-1) if self.bias is not None else None
        out = F.conv2d(x, weight.to(x.dtype) if x.dtype != weight.dtype else weight, bias, self.stride, self.padding)
        out = out.view(out.shape[0], k, c_out, out.shape[-2], out.shape[-1])
        return torch.einsum("nk,nkchw->nchw", a.to(out.dtype), out)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The report's literal form: K convolutions, weighted per sample and summed."""
        a = self.mixing(x)
        out = 0
        for i in range(self.k):
            b = self.bias[i] if self.bias is not None else None
            out = out + a[:, i, None, None, None] * F.conv2d(x, self.weight[i], b, self.stride, self.padding)
        return out


class MixBlock(nn.Module):
    """MixConv -> BN -> activation [-> + shortcut] [-> max-pool]."""

    def __init__(self, c_in: int, c_out: int, *, k: int, temperature: float, activation: str, batch_norm: bool,
                 shortcut: bool, residual: bool, pool: bool):
        super().__init__()
        self.conv = MixConv2d(c_in, c_out, k, temperature=temperature, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.act = ACTIVATIONS[activation]()
        self.shortcut = None
        if residual or shortcut:
            self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out) if batch_norm else nn.Identity())
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.conv(x)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.pool(out)


class MixConvNet(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, widths, k: int, temperature: float, activation: str,
                 pool_every: int, shortcut: bool, residual: bool, batch_norm: bool, init: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        blocks, c = [], in_channels
        for i, w in enumerate(widths):
            pool = pool_every > 0 and (i % pool_every == pool_every - 1)
            blocks.append(MixBlock(c, int(w), k=k, temperature=temperature, activation=activation,
                                   batch_norm=batch_norm, shortcut=shortcut, residual=residual, pool=pool))
            c = int(w)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)
        apply_init(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model()
def mixconv000(num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 128, 128, 256, 256, 512, 512),
               k: int = 4, temperature: float = 1.0, init: str = "default", residual: bool = False) -> nn.Module:
    """Report 000: 7 mix-conv blocks, PReLU, max-pool every other block (residual=True adds skips)."""
    return MixConvNet(num_classes=num_classes, in_channels=in_channels, widths=widths, k=k, temperature=temperature,
                      activation="prelu", pool_every=2, shortcut=False, residual=residual, batch_norm=True, init=init)


@register_model()
def mixconv001(num_classes: int = 10, in_channels: int = 3,
               widths: tuple = (32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 256), k: int = 4,
               temperature: float = 1.0, init: str = "kaiming_normal") -> nn.Module:
    """Report 001: 11 mix-conv blocks, LeakyReLU, 1x1-conv shortcut where channels change, kaiming init."""
    return MixConvNet(num_classes=num_classes, in_channels=in_channels, widths=widths, k=k, temperature=temperature,
                      activation="leakyrelu", pool_every=3, shortcut=True, residual=False, batch_norm=True, init=init)


@register_model()
def mixconv002(num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 64, 128, 128, 256, 256),
               k: int = 4, temperature: float = 1.0, init: str = "default") -> nn.Module:
    """Report 002: residual mix-conv blocks, ReLU, max-pool every other block."""
    return MixConvNet(num_classes=num_classes, in_channels=in_channels, widths=widths, k=k, temperature=temperature,
                      activation="relu", pool_every=2, shortcut=False, residual=True, batch_norm=True, init=init)
