"""Multi-process training under torchrun: process group, rank roles, cross-rank batch norm.

Owns reading torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), choosing the backend
(nccl on CUDA, gloo on CPU), the few collectives the training loop needs, and batch norm
whose statistics cover the whole global batch. torch's SyncBatchNorm refuses CPU tensors,
and without it a 2-process run would normalise each half-batch by its own statistics and
drift from a 1-process run with the same global batch. Never decides what to train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum a few numbers over ranks (one collective)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (so all ranks stop together instead of hanging)."""
        if not self.enabled:
            return flag
        return self.sum([float(flag)], device)[0] > 0

    def shutdown(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def from_environment() -> DistContext:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain `cifarlab train` has none of them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def init(ctx: DistContext, device: torch.device) -> None:
    if not ctx.enabled or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)


def check_batch(ctx: DistContext, batch_size: int, eval_batch_size: int) -> None:
    if ctx.enabled and batch_size % ctx.world_size:
        raise UserError(f"batch_size {batch_size} is the global batch and must split evenly over "
                        f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient: every rank's loss depends on the total, so the gradient of each
    rank's input is the sum over ranks of the gradients of the total."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.Module):
    """Batch norm over the global batch: sums and sums of squares are all-reduced (autograd flows through
    the all-reduce, so gradients match a single process too). Same parameter and buffer names as the
    module it replaces, so checkpoints stay interchangeable with single-process runs."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims),
                           torch.tensor([x.numel() / x.shape[1]], device=x.device)])
        total = _AllReduceSum.apply(local)
        c = self.num_features
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)) * m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch norm (1d/2d/3d and subclasses) with CrossRankBatchNorm, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, CrossRankBatchNorm(child))
        else:
            convert_batchnorm(child)
    return module
