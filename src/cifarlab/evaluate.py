"""Evaluation: loss, accuracy and predictions of a model on a split, with optional flip TTA.

Owns the evaluation pass (large batches, autocast, no grad), test-time augmentation, and
recomputing batch-norm statistics for the weights being evaluated. Never trains and never reads checkpoints (inference.py rebuilds trained models).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import runtime


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    n: int
    predictions: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,)
    probabilities: np.ndarray  # float32 (n, classes), softmax of the (TTA) logits
    # images whose logits hold an inf or nan: each makes the mean loss nan, and its prediction is
    # whatever argmax makes of them (the first nan's class); counted so a nan loss says why
    nonfinite: int = 0

    def as_dict(self) -> dict:
        out = {"accuracy": self.accuracy, "loss": self.loss, "n": self.n}
        if self.nonfinite:
            out["nonfinite"] = self.nonfinite
        return out


def tta_logits(model: torch.nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Logits with test-time augmentation.

    flip: mean of x and its mirror. flip_translate (airbench's level 2): half the
    weight on that, half on the mirrored pair shifted 1 px up-left and 1 px
    down-right (reflect padding).
    """
    if tta == "none":
        return model(x)

    def mirror(v):
        return 0.5 * (model(v) + model(v.flip(3)))

    logits = mirror(x)
    if tta == "flip":
        return logits
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[:, :, :h, :w].contiguous(memory_format=torch.channels_last))
                     + mirror(padded[:, :, 2:, 2:].contiguous(memory_format=torch.channels_last)))
    return 0.5 * logits + 0.5 * shifted


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, precision: str, tta: str = "none",
             bn_stats: str = "running") -> EvalResult:
    """One pass over `loader` (no augmentation). tta='flip' averages the logits of x and its mirror.

    bn_stats='batch' normalises each batch by its own statistics, as a report's validation loop without
    model.eval() did. Its batches then come in a fixed random order (a split stored class by class would
    otherwise give one-class batches, whose statistics say nothing) and the results are put back in the
    loader's order; the running statistics are restored afterwards, so the model leaves as it came."""
    was_training = model.training
    model.eval()
    order = None
    saved = []
    if bn_stats == "batch":
        loader = copy.copy(loader)
        loader.shuffle = True
        order = loader.order(0)
        for m in batchnorm_layers(model):
            saved.append((m, [b.clone() for b in m.buffers()]))
            m.train()
    elif bn_stats != "running":
        raise ValueError(f"bn_stats must be running or batch; got {bn_stats!r}")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)
    preds, labels, probs = [], [], []
    try:
        for x, y in loader.epoch(0):
            with runtime.autocast(device, precision):
                logits = tta_logits(model, x, tta)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            nonfinite += (~torch.isfinite(logits)).any(1).sum()
            preds.append(logits.argmax(1))
            probs.append(torch.softmax(logits, 1))
            labels.append(y)
    finally:
        for m, buffers in saved:
            for b, old in zip(m.buffers(), buffers):
                b.copy_(old)
        model.train(was_training)
    if not labels:
        return EvalResult(float("nan"), float("nan"), 0, np.zeros(0, np.int64), np.zeros(0, np.int64),
                          np.zeros((0, 0), np.float32))
    pred, label, prob = torch.cat(preds), torch.cat(labels), torch.cat(probs)
    if order is not None:  # back to the loader's own order, so predictions line up with its images
        back = torch.argsort(order)
        pred, label, prob = pred[back], label[back], prob[back]
    p, t = pred.cpu().numpy(), label.cpu().numpy()
    n = len(t)
    return EvalResult(float(loss_sum.item()) / n, float((p == t).mean()), n, p, t, prob.cpu().numpy(),
                      int(nonfinite.item()))


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers keeping running statistics: torch's batch norms and the DDP cross-rank one (distributed.py)."""
    return [m for m in model.modules() if getattr(m, "track_running_stats", False)
            and isinstance(getattr(m, "running_mean", None), torch.Tensor) and hasattr(m, "momentum")]


def calibration_indices(num_train: int, images: int, seed: int) -> np.ndarray:
    """Which training images recompute batch-norm statistics: a fixed sample, seeded by the run's seed, so
    that `cifarlab eval --bn-stats recalibrate` rebuilds the statistics a bn_recalibrate run evaluated with."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randperm(num_train, generator=g)[:min(images, num_train)].numpy()


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches, device: torch.device, precision: str) -> int:
    """Replace every batch norm's running mean and variance with their average over `batches` (an
    iterable of input tensors, or of (x, y) pairs) under the model's current weights; returns the
    number of images seen. Weights, train/eval mode and momentum are left as they were.

    Why: eval mode normalises with running averages collected while the weights were still moving.
    When the weights move fast relative to batch norm's ~1/momentum-batch memory (Adam on
    scale-invariant conv weights, say), those averages describe none of the recent weights and
    eval-mode accuracy falls far below what the same weights score with batch statistics; the
    mix-conv seed recipes showed exactly that on a GPU (docs/RESULTS.md). Averaging the statistics
    under fixed weights is the "precise BN" remedy (Wu & Johnson, 2021; torch.optim.swa_utils.update_bn
    does the same for SWA). Batches should be in random class order, as training batches are.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        if getattr(m, "num_batches_tracked", None) is not None:
            m.num_batches_tracked.zero_()
        m.momentum = None  # None = cumulative average: every batch counts the same
    was_training = model.training
    model.train()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            with runtime.autocast(device, precision):
                model(x)
            seen += len(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return seen

