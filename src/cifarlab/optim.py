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
    groups = [{"params": weights, "weight_decay": o.weight_decay, "lr": lr}]
    if biases:
        bias_wd = o.weight_decay / o.bias_lr_scale if o.decay_bias else 0.0
        groups.append({"params": biases, "weight_decay": bias_wd, "lr": lr * o.bias_lr_scale})
    return groups


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    lr = effective_lr(cfg)
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
