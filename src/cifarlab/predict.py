"""Predict classes for image files with a trained run: batched, decoded in parallel, CSV or Kaggle output.

Owns expanding inputs (files, folders, globs), shaping images like the training data
and writing predictions. Never trains and never needs labels.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import runtime
from .data.folder import walk_images
from .errors import UserError
from .runs import write_csv as write_csv_file


@dataclass
class Prediction:
    path: Path
    classes: list[str]  # top-k, most likely first
    probabilities: list[float]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively) and glob patterns -> sorted unique image paths."""
    if not inputs:
        raise UserError("no inputs given; pass image files, folders or a quoted glob like 'dir/*.png'")
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += walk_images(p)[0]
        elif p.is_file():
            paths.append(p)
        else:
            matches = [Path(m) for m in glob.glob(str(p), recursive=True)]
            if not matches:
                raise UserError(f"no image found for '{item}'; pass image files, folders or a quoted glob like 'dir/*.png'")
            paths += [m for m in matches if m.is_file()]
    unique = sorted(set(paths), key=lambda q: q.parts)  # Path order, computed once per path
    if not unique:
        raise UserError("no images to predict; check the inputs")
    return unique


def predict_run(run_dir: str | Path, inputs: list[str], *, topk: int = 1, checkpoint: str = "best",
                device: str = "auto", batch_size: int = 256, skip_bad: bool = False,
                tta: str | None = None, int8: bool = False, log=print) -> list[Prediction]:
    """Top-k classes per image. tta=None uses the run's configured TTA (flip_translate costs 6 passes).

    int8: quantized convolutions on the CPU (quantize.py), faster than bf16 on VNNI CPUs (docs/RESULTS.md).
    Worker processes decode the next files while the model runs on the ones already decoded.
    Batches of 256: faster than 1,024 for fastnet's forward on a 2-core CPU, bf16 and int8 alike
    (benchmarks/predict_throughput.py)."""
    from .data.folder import stream_files
    from .evaluate import tta_logits
    from .inference import load_trained

    run = load_trained(run_dir, checkpoint, device)
    if not 1 <= topk <= len(run.classes):
        raise UserError(f"--topk must be between 1 and {len(run.classes)} (the run's class count); got {topk}")
    paths = expand_inputs(inputs)
    if run.cfg.eval_bn_stats == "batch":
        log("note: this run was scored with each batch's own batch-norm statistics (eval_bn_stats=batch); "
            "predictions use the running statistics, which can score lower")
    c, h, _ = run.record.image_shape
    if int8:
        run = _int8_run(run, paths, c, h, skip_bad, log)
    aug, dev, mode = run.normaliser(), run.device, run.cfg.tta if tta is None else tta
    kept, probs = [], []
    with torch.inference_mode():
        for idx, images in stream_files(paths, c, h, skip_bad):
            kept.append(idx)
            for i in range(0, len(images), batch_size):
                x = aug(torch.from_numpy(images[i:i + batch_size]).to(dev))
                with runtime.autocast(dev, run.precision):
                    logits = tta_logits(run.model, x, mode)
                probs.append(torch.softmax(logits.float(), 1).cpu())
    if not probs:
        raise UserError("none of the inputs could be decoded; check the files")
    kept_paths = [paths[i] for i in np.concatenate(kept).tolist()]
    top_p, top_i = torch.cat(probs).topk(topk, dim=1)
    classes = run.classes
    return [Prediction(path, [classes[j] for j in idx], [round(v, 6) for v in pr])
            for path, idx, pr in zip(kept_paths, top_i.tolist(), top_p.tolist())]


def _int8_run(run, paths: list[Path], c: int, h: int, skip_bad: bool, log):
    """The run quantized: calibrated on its own data, or on the first inputs when that data is not here."""
    from .data.folder import FileList, decode_files
    from .quantize import CALIBRATION_IMAGES

    def first_inputs():
        head = paths[:CALIBRATION_IMAGES]
        return decode_files(FileList(head, [0] * len(head), ["?"]), channels=c, image_size=h, skip_bad=skip_bad).images

    return run.int8(fallback=first_inputs, log=log)


def write_csv(predictions: list[Prediction], path: str | Path, kaggle: bool = False) -> None:
    """kaggle: `id,label` with ids from file stems (numeric stems sort numerically). Else path, topk columns."""
    if kaggle:
        rows = sorted(predictions, key=lambda p: (0, int(p.path.stem), "") if p.path.stem.isdigit()
                      else (1, 0, p.path.stem))
        write_csv_file(path, ["id", "label"], [[p.path.stem, p.classes[0]] for p in rows])
        return
    k = len(predictions[0].classes) if predictions else 1
    write_csv_file(path, ["path"] + [f"{name}{i + 1}" for i in range(k) for name in ("class", "probability")],
              [[str(p.path)] + [v for pair in zip(p.classes, p.probabilities) for v in pair] for p in predictions])


def format_lines(predictions: list[Prediction]) -> list[str]:
    return [f"{p.path}  " + "  ".join(f"{c} {pr:.3f}" for c, pr in zip(p.classes, p.probabilities))
            for p in predictions]


