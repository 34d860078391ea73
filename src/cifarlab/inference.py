"""Trained models for inference: what a checkpoint says about its model, and the run handle built from it.

Owns the model record a checkpoint carries (config, classes, image shape, normalisation), turning a
checkpoint back into the model it evaluated (EMA weights when the run kept an EMA), and `TrainedRun`,
which eval, predict, report, export and int8 all start from, plus `evaluate_run` (the eval command).
Never trains and never imports the trainer: data flows from trainer.py to here, not back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import runtime
from .config import Config, from_dict
from .errors import UserError
from .evaluate import EvalResult, batchnorm_layers, evaluate
from .runs import checkpoint_name


@dataclass(frozen=True)
class ModelRecord:
    """What rebuilding and feeding a trained model needs, stored in every checkpoint beside the weights
    (torchvision keeps the same facts in its Weights' meta)."""
    cfg: Config
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) as the model sees it
    mean: tuple[float, ...]  # per channel, [0, 1] units
    std: tuple[float, ...]

    def to_state(self) -> dict:
        """The checkpoint's entries for this record (plain lists and dicts: loadable with weights_only=True)."""
        return {"config": self.cfg.to_dict(), "classes": list(self.classes), "image_shape": list(self.image_shape),
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_state(cls, state: dict) -> "ModelRecord":
        return cls(from_dict(state["config"]), tuple(state["classes"]), tuple(int(v) for v in state["image_shape"]),
                   tuple(float(v) for v in state["mean"]), tuple(float(v) for v in state["std"]))

    def build(self) -> torch.nn.Module:
        """A fresh, untrained model of this record's architecture."""
        from .models import get_model

        c, size = self.image_shape[0], self.image_shape[1]
        return get_model(self.cfg.model, num_classes=len(self.classes), in_channels=c, image_size=size,
                         **self.cfg.model_args)

    def normaliser(self):
        """uint8 NHWC batch -> the normalised float input the model was trained on."""
        from .augment import Augmenter

        return Augmenter(None, self.mean, self.std, channels_last=self.cfg.channels_last)


def evaluated_weights(state: dict) -> dict:
    """The weights a run evaluates with: its EMA's (AveragedModel keys 'module.<name>') when it kept one."""
    if state.get("ema"):
        return {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    return state["model"]


def model_from_checkpoint(state: dict, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """Rebuild the evaluated model of a checkpoint, in eval mode on `device`."""
    record = ModelRecord.from_state(state)
    model = record.build()
    try:
        model.load_state_dict(evaluated_weights(state))
    except RuntimeError as err:
        raise UserError(f"checkpoint does not fit model '{record.cfg.model}' ({str(err).splitlines()[0][:120]}); "
                        "was it made by another model or class count?") from None
    model = model.to(device)
    if channels_last:
        model = runtime.to_channels_last(model)
    return model.eval()


@dataclass
class TrainedRun:
    """A run's checkpoint rebuilt for inference: what eval, report, predict, export and int8 start from."""
    record: ModelRecord
    model: torch.nn.Module
    device: torch.device
    precision: str
    checkpoint: Path | None = None

    @property
    def cfg(self) -> Config:
        return self.record.cfg

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)

    def normaliser(self):
        return self.record.normaliser()

    def int8(self, fallback=None, log=print) -> "TrainedRun":
        """This run with its model quantized to int8 (CPU only; see quantize.py). Logs how it was calibrated."""
        from .quantize import describe, int8_model

        model, calibration = int8_model(self, self.checkpoint, fallback)
        log(describe(calibration))
        return dataclasses.replace(self, model=model, precision="fp32")

    def evaluate(self, images: np.ndarray, labels: np.ndarray, tta: str | None = None,
                 bn_stats: str | None = None) -> EvalResult:
        """Score images: with the run's TTA and batch-norm statistics (eval_bn_stats) unless told otherwise."""
        from .loader import DeviceLoader

        loader = DeviceLoader(images, labels, runtime.eval_batch_size(self.cfg.eval_batch_size, self.device),
                              self.device, self.normaliser(),
                              shuffle=False, augment=False)
        return evaluate(self.model, loader, self.device, self.precision, self.cfg.tta if tta is None else tta,
                        bn_stats or self.cfg.eval_bn_stats)

    def recalibrate(self, train_images: np.ndarray, images: int) -> int:
        """Recompute the model's batch-norm statistics (in memory) from `images` of its training images, the
        sample and batch size a bn_recalibrate run uses; returns how many it saw."""
        from .evaluate import calibration_indices, recalibrate_batchnorm
        from .loader import DeviceLoader

        pick = calibration_indices(len(train_images), images, self.cfg.seed)
        loader = DeviceLoader(train_images[pick], np.zeros(len(pick), np.int64), self.cfg.batch_size, self.device,
                              self.normaliser(), shuffle=False, augment=False)
        return recalibrate_batchnorm(self.model, loader.epoch(0), self.device, self.precision)


def load_trained(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> TrainedRun:
    from .runs import find_checkpoint, load_checkpoint

    dev = runtime.resolve_device(device)
    if dev.type == "cpu":  # eval and predict reuse their large activations' memory batch to batch, as training does
        runtime.keep_freed_cpu_memory()
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=dev)
    record = ModelRecord.from_state(state)
    model = model_from_checkpoint(state, dev, record.cfg.channels_last)
    return TrainedRun(record, model, dev, runtime.resolve_precision(record.cfg.precision, dev), path)


# how `cifarlab eval --bn-stats` normalises: the run's own way, or another, to see what each costs
BN_STATS = ("run", "running", "batch", "recalibrate")


def eval_file(run_dir: str | Path, int8: bool = False, bn_stats: str = "run", checkpoint: str = "best") -> Path:
    """Where evaluate_run writes its result (int8 scores, scores with other batch-norm statistics and scores of
    a kept epoch's weights beside, not over, the run's own)."""
    epoch = checkpoint_name(checkpoint)
    prefix = f"eval-{epoch}" if epoch.startswith("epoch-") else "eval"
    if int8:
        return Path(run_dir) / f"{prefix}-int8.json"
    return Path(run_dir) / (f"{prefix}.json" if bn_stats == "run" else f"{prefix}-bn-{bn_stats}.json")


def evaluate_run(run_dir: str | Path, data: str | None = None, checkpoint: str = "best",
                 device: str = "auto", log=print, int8: bool = False, bn_stats: str = "run",
                 calibration_images: int | None = None) -> EvalResult:
    """Score a trained run on `data` (an image folder PATH/<class>/*) or, by default, its own validation split.

    checkpoint: best, last, or an epoch the run kept (keep_checkpoints): 10 or "epoch-10".
    int8: score the model quantized to int8 (CPU), to see what `predict --int8` costs in accuracy.
    bn_stats: the batch-norm statistics to normalise with: "run" (as the run scored itself: eval_bn_stats),
    "running" (eval mode, the statistics stored in the checkpoint), "batch" (each evaluation batch its own,
    as a loop without model.eval()), or "recalibrate" (recomputed first from `calibration_images` training
    images: the run's bn_recalibrate, else 2,000)."""
    from .data import load_folder_for_eval, load_splits
    from .runs import write_json

    if bn_stats not in BN_STATS:
        raise UserError(f"bn_stats must be one of {', '.join(BN_STATS)}; got {bn_stats!r}")
    checkpoint = checkpoint_name(checkpoint)  # 10 and "epoch-10" name one file, and its results say which
    if int8 and bn_stats != "run":
        raise UserError("--int8 scores the quantized model, whose batch norms are folded into its convolutions; "
                        "drop --bn-stats")
    run = load_trained(run_dir, checkpoint, device)
    cfg, classes = run.cfg, run.classes
    splits = None
    if data is None or bn_stats == "recalibrate":
        splits = load_splits(cfg.data)
        if splits.classes != classes:
            raise UserError(f"the run's data {cfg.data.spec} now has different classes; pass --data to a labelled folder")
    if data is None:
        x, y, source = splits.val_x, splits.val_y, splits.val_source
        if len(y) == 0:
            raise UserError("this run trained on all its data (val_fraction=0); pass --data PATH to a labelled test folder")
    else:
        x, y, notes = load_folder_for_eval(data, classes, run.record.image_shape, cfg.data)
        for note in notes:
            log(f"note: {note}")
        source = str(data)
    if int8:
        run = run.int8(fallback=x, log=log)
    mode = {"run": None, "recalibrate": "running"}.get(bn_stats, bn_stats)
    extra = {}
    if bn_stats != "run" and not batchnorm_layers(run.model):
        log(f"note: model {cfg.model} has no batch norm: --bn-stats {bn_stats} scores it as the run did")
    if bn_stats == "recalibrate":
        wanted = calibration_images or cfg.bn_recalibrate or 2000
        extra["calibration_images"] = run.recalibrate(splits.train_x, wanted)
        log(f"batch-norm statistics recomputed from {extra['calibration_images']:,} training images")
    result = run.evaluate(x, y, bn_stats=mode)
    out = {**result.as_dict(), "data": source, "checkpoint": checkpoint, "tta": cfg.tta, "int8": int8,
           "bn_stats": bn_stats if bn_stats != "run" else cfg.eval_bn_stats, **extra}
    write_json(eval_file(run_dir, int8, bn_stats, checkpoint), out)
    return result
