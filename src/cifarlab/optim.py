"""Optimizer and learning-rate schedule builders (torch.optim and lr_scheduler underneath).

Owns the mapping from OptimConfig/ScheduleConfig to torch objects and the rule for
batch-size-aware learning rates. Every schedule but plateau is a LambdaLR whose
factor is a pure function of the optimizer step, so resuming needs only the step.
Never runs a training step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .config import Config
from .runtime import cpu_has_native_bf16


def effective_lr(cfg: Config) -> float:
    """optim.lr, scaled linearly when optim.lr_reference_batch is set (Goyal et al. 2017)."""
    o = cfg.optim
    if o.lr_reference_batch:
        return o.lr * cfg.batch_size * cfg.accumulate_steps / o.lr_reference_batch
    return o.lr


def _param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """Weights in one group; biases and norm parameters (ndim <= 1) in another.

    By default the second group is not decayed (decaying them only hurts, common
    practice since ResNet). Speed-runs instead give it a much larger lr
    (optim.bias_lr_scale) and decay it with the same lr*wd product as the weights.
    """
    o = cfg.optim
    weights, biases = [], []
    for p in model.parameters():
        if p.requires_grad:
            (weights if p.ndim > 1 else biases).append(p)
    lr = effective_lr(cfg)
    groups = [{"params": weights, "weight_decay": o.weight_decay, "lr": lr}] if weights else []
    if biases:
        bias_wd = o.weight_decay / o.bias_lr_scale if o.decay_bias else 0.0
        groups.append({"params": biases, "weight_decay": bias_wd, "lr": lr * o.bias_lr_scale})
    return groups


def _newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a matrix (U S V^T -> roughly U V^T) with a quintic Newton-Schulz
    iteration, in bf16 where the hardware multiplies bf16 natively; coefficients from Keller Jordan's Muon
    (they favour speed over exact convergence)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(_newton_schulz_dtype(g.device))
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return (x.T if tall else x).to(g.dtype)


def _newton_schulz_dtype(device: torch.device) -> torch.dtype:
    # a CPU without AVX512-BF16/AMX emulates bf16 matmuls, many times slower than fp32 on fast's filter banks
    # (benchmarks/muon_step.py prints both), which made each Muon step cost seconds there
    if device.type == "cpu" and not cpu_has_native_bf16():
        return torch.float32
    return torch.bfloat16


class MuonSGD(torch.optim.Optimizer):
    """Muon for groups marked muon=True (conv filters), Nesterov SGD with coupled weight decay for the rest.

    Muon keeps each filter bank at unit RMS and steps along the orthogonalised momentum,
    which trains the speed-run CNN in fewer epochs than SGD (airbench94_muon).
    """

    def __init__(self, groups: list[dict]):
        super().__init__(groups, dict(lr=0.1, momentum=0.9, weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["muon"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(g)
                buf.mul_(mom).add_(g)
                g = g.add(buf, alpha=mom)  # Nesterov
                if group["muon"]:
                    # a 5-D tensor holds K expert filter banks (mix-conv): each is its own matrix
                    for pk, gk in (zip(p, g) if p.ndim == 5 else [(p, g)]):
                        pk.mul_(pk.shape[0] ** 0.5 / (pk.norm() + 1e-12))
                        pk.add_(_newton_schulz(gk.reshape(len(gk), -1)).view_as(pk), alpha=-lr)
                else:
                    p.add_(g, alpha=-lr)


def _router_params(model: torch.nn.Module) -> list:
    """The mixing-weight predictors of mix-conv layers: small linear layers that want an ordinary lr."""
    return [p for name, p in model.named_parameters() if p.requires_grad and ".router." in f".{name}"]


def _muon_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    o = cfg.optim
    routers = _router_params(model)
    skip = {id(p) for p in routers}
    filters = [p for p in model.parameters() if p.requires_grad and p.ndim in (4, 5)]
    rest = [p for p in model.parameters() if p.ndim not in (4, 5) and id(p) not in skip]
    others = _param_groups(torch.nn.ParameterList(rest), cfg)
    for g in others:
        g.update(momentum=o.momentum, muon=False)
    groups = [dict(params=filters, lr=o.muon_lr, momentum=o.muon_momentum, weight_decay=0.0, muon=True)] + others
    if routers:
        groups.append(dict(params=routers, lr=o.router_lr or effective_lr(cfg), momentum=o.momentum,
                           weight_decay=0.0, muon=False))
    return groups


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    lr = effective_lr(cfg)
    if o.name == "muon":
        return MuonSGD(_muon_groups(model, cfg))
    groups = _param_groups(model, cfg)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=o.betas, eps=o.eps)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=o.betas, eps=o.eps)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=o.alpha, eps=o.eps, momentum=o.momentum)
    if o.name == "asgd":
        return torch.optim.ASGD(groups, lr=lr, lambd=o.asgd_lambd, t0=o.asgd_t0)
    raise AssertionError(o.name)  # config validation already limits the names


def lr_factor_fn(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `step` (0-based), for LambdaLR."""
    s = cfg.schedule
    total = max(1, cfg.epochs * steps_per_epoch)
    # capped at half the run so a short run (epochs=1) still decays instead of only warming up
    warmup = min(s.warmup_epochs * steps_per_epoch, total / 2)
    floor = s.eta_min / effective_lr(cfg)
    t_max = (s.t_max_epochs or cfg.epochs) * steps_per_epoch

    if s.per_epoch:
        # a torch scheduler stepped once per epoch: every step of epoch e uses the lr of its first step
        return _held_per_epoch(_step_factor(cfg, s, total, warmup, floor, t_max, steps_per_epoch), steps_per_epoch)
    return _step_factor(cfg, s, total, warmup, floor, t_max, steps_per_epoch)


def _held_per_epoch(factor: Callable[[int], float], steps_per_epoch: int) -> Callable[[int], float]:
    return lambda step: factor(step // steps_per_epoch * steps_per_epoch)


def _step_factor(cfg: Config, s, total: float, warmup: float, floor: float, t_max: float,
                 steps_per_epoch: int) -> Callable[[int], float]:
    def warm(step: int) -> float | None:
        return s.warmup_start + (1 - s.warmup_start) * (step + 1) / warmup if step < warmup else None

    if s.name == "constant":
        return lambda step: warm(step) or 1.0
    if s.name == "cosine":
        def cosine(step: int) -> float:
            w = warm(step)
            if w is not None:
                return w
            t = min(step - warmup, t_max - warmup) / max(1.0, t_max - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return cosine
    if s.name == "onecycle":
        def onecycle(step: int) -> float:
            w = warm(step)
            if w is not None:
                return w
            t = (step - warmup) / max(1.0, total - warmup)
            return 1 + (s.final_lr_fraction - 1) * min(t, 1.0)
        return onecycle
    if s.name == "step":
        return lambda step: s.gamma ** ((step // steps_per_epoch) // s.step_epochs)
    raise AssertionError(s.name)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """LambdaLR stepped per optimizer step, or ReduceLROnPlateau stepped per epoch."""
    s = cfg.schedule
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=s.plateau_mode, factor=s.plateau_factor, patience=s.plateau_patience,
            threshold=s.plateau_threshold)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, steps_per_epoch))


def steps_per_epoch(batches_per_epoch: int, accumulate_steps: int) -> int:
    """Optimizer steps per epoch; a trailing partial accumulation still steps."""
    return -(-batches_per_epoch // accumulate_steps)
