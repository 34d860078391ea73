"""Building blocks shared by several model families: named weight initialisation, and a dropout
that is fast on CPU.

Owns the init schemes a config can pick (init=kaiming_normal, ...). Never defines a
whole model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

INITS = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform")


INIT_LAYERS = ("all", "conv", "linear")


def apply_init(model: nn.Module, init: str, layers: str = "all") -> None:
    """Re-initialise conv and/or linear weights (and MixConv experts, which count as conv) with a named
    scheme; the biases of the layers it touches go to zero. layers="linear" is e.g. report 001's choice."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}")
    if layers not in INIT_LAYERS:
        raise ValueError(f"init layers must be one of {', '.join(INIT_LAYERS)}")
    if init == "default":
        return
    fn = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
          "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
          "xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_}[init]
    conv, linear = layers in ("all", "conv"), layers in ("all", "linear")
    for m in model.modules():
        if (conv and isinstance(m, nn.Conv2d)) or (linear and isinstance(m, nn.Linear)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif conv and hasattr(m, "expert_weights"):  # layers holding K stacked kernels (MixConv2d)
            for w in m.expert_weights():
                fn(w)


class _CpuDropout(torch.autograd.Function):
    """Dropout whose keep-mask comes from 16 random bits per element, 4 elements per 64-bit draw of torch's
    generator. PyTorch's CPU dropout draws a double (two 32-bit Mersenne-Twister outputs) per element
    unless MKL serves it (Intel CPUs only), which makes the mask cost several times the layer it follows.
    The drop probability is p rounded to a multiple of 1/65536 (0.1 -> 0.1000061) and the kept values are
    scaled by 1/(1 - that), so the expected output is x exactly, as with nn.Dropout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        drop_threshold = round(p * 65536)
        draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)  # all 64 bits
        bits = draws.view(torch.int16)[:x.numel()].view(x.shape)  # uniform over [-32768, 32767]
        keep = bits >= drop_threshold - 32768
        ctx.scale = 65536 / (65536 - drop_threshold)
        ctx.save_for_backward(keep)
        return torch.where(keep, x, 0).mul_(ctx.scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad_out, 0).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, no state), with the mask drawn by _CpuDropout when training on a CPU;
    elsewhere (CUDA, eval, export) exactly nn.Dropout. Seeded and resumed with torch's CPU generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or x.device.type != "cpu" or not 0 < self.p < 1 or torch.jit.is_tracing()
                or torch.jit.is_scripting()):
            return F.dropout(x, self.p, self.training, self.inplace)
        return _CpuDropout.apply(x, self.p)
