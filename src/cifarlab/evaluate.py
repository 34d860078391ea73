"""Evaluation: loss, accuracy and predictions of a model on a split, with optional flip TTA.

Owns the evaluation pass (large batches, autocast, no grad) and `evaluate_run`, which
rebuilds a trained model from its checkpoint and scores it on any labelled folder.
Never trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import runtime
from .errors import UserError


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    n: int
    predictions: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,)
    probabilities: np.ndarray  # float32 (n, classes), softmax of the (TTA) logits

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "n": self.n}


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
def evaluate(model: torch.nn.Module, loader, device: torch.device, precision: str, tta: str = "none") -> EvalResult:
    """One pass over `loader` (no augmentation). tta='flip' averages the logits of x and its mirror."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    preds, labels, probs = [], [], []
    for x, y in loader.epoch(0):
        with runtime.autocast(device, precision):
            logits = tta_logits(model, x, tta)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        preds.append(logits.argmax(1))
        probs.append(torch.softmax(logits, 1))
        labels.append(y)
    model.train(was_training)
    if not labels:
        return EvalResult(float("nan"), float("nan"), 0, np.zeros(0, np.int64), np.zeros(0, np.int64),
                          np.zeros((0, 0), np.float32))
    p = torch.cat(preds).cpu().numpy()
    t = torch.cat(labels).cpu().numpy()
    n = len(t)
    return EvalResult(float(loss_sum.item()) / n, float((p == t).mean()), n, p, t, torch.cat(probs).cpu().numpy())


@dataclass
class TrainedRun:
    """A run's checkpoint rebuilt for inference: what eval, report and predict all start from."""
    state: dict
    cfg: object  # Config
    model: torch.nn.Module
    device: torch.device
    precision: str
    checkpoint: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.state["classes"])

    def normaliser(self):
        """uint8 NHWC batch -> the normalised float input the model was trained on."""
        from .augment import Augmenter

        return Augmenter(None, self.state["mean"], self.state["std"], channels_last=self.cfg.channels_last)

    def int8(self, fallback=None, log=print) -> "TrainedRun":
        """This run with its model quantized to int8 (CPU only; see quantize.py). Logs how it was calibrated."""
        from .quantize import describe, int8_model

        model, calibration = int8_model(self, self.checkpoint, fallback)
        log(describe(calibration))
        return dataclasses.replace(self, model=model, precision="fp32")

    def evaluate(self, images: np.ndarray, labels: np.ndarray, tta: str | None = None) -> EvalResult:
        from .loader import DeviceLoader

        loader = DeviceLoader(images, labels, self.cfg.eval_batch_size, self.device, self.normaliser(),
                              shuffle=False, augment=False)
        return evaluate(self.model, loader, self.device, self.precision, self.cfg.tta if tta is None else tta)


def load_trained(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> TrainedRun:
    from .config import from_dict
    from .runs import find_checkpoint, load_checkpoint
    from .train import model_from_checkpoint

    dev = runtime.resolve_device(device)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=dev)
    cfg = from_dict(state["config"])
    model = model_from_checkpoint(state, dev, cfg.channels_last)
    return TrainedRun(state, cfg, model, dev, runtime.resolve_precision(cfg.precision, dev), path)


def eval_file(run_dir: str | Path, int8: bool = False) -> Path:
    """Where evaluate_run writes its result (int8 scores beside, not over, the float ones)."""
    return Path(run_dir) / ("eval-int8.json" if int8 else "eval.json")


def evaluate_run(run_dir: str | Path, data: str | None = None, checkpoint: str = "best",
                 device: str = "auto", log=print, int8: bool = False) -> EvalResult:
    """Score a trained run on `data` (an image folder PATH/<class>/*) or, by default, its own validation split.

    int8: score the model quantized to int8 (CPU), to see what `predict --int8` costs in accuracy."""
    from .data import load_folder_for_eval, load_splits
    from .runs import write_json

    run = load_trained(run_dir, checkpoint, device)
    cfg, state, classes = run.cfg, run.state, run.classes
    if data is None:
        splits = load_splits(cfg.data)
        if splits.classes != classes:
            raise UserError(f"the run's data {cfg.data.spec} now has different classes; pass --data to a labelled folder")
        x, y, source = splits.val_x, splits.val_y, splits.val_source
        if len(y) == 0:
            raise UserError("this run trained on all its data (val_fraction=0); pass --data PATH to a labelled test folder")
    else:
        x, y, notes = load_folder_for_eval(data, classes, tuple(state["image_shape"]), cfg.data)
        for note in notes:
            log(f"note: {note}")
        source = str(data)
    if int8:
        run = run.int8(fallback=x, log=log)
    result = run.evaluate(x, y)
    out = {**result.as_dict(), "data": source, "checkpoint": checkpoint, "tta": cfg.tta, "int8": int8}
    write_json(eval_file(run_dir, int8), out)
    return result
