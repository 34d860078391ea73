"""int8 inference on CPU for predict and eval: the model's convolutions run in 8 bits (x86 VNNI).

Why: on CPUs with VNNI, int8 convolutions run faster than bf16 ones at unchanged accuracy for the
speed-run nets (benchmarks/predict_throughput.py measures both side by side; docs/RESULTS.md has the numbers).
Owns folding BN into convolutions (through the model's own `fold_batchnorm` where it has one),
calibration (activation ranges observed on the run's own training images, cached beside the
checkpoint as tensors only) and PyTorch's eager / FX quantization. Never trains.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError

CALIBRATION_IMAGES = 1024  # a few hundred already fix the ranges; calibration runs once per checkpoint
AGREEMENT_IMAGES = 2000
_CACHE_FORMAT = 1


@dataclass
class Calibration:
    source: str  # where the calibration images came from
    cached: bool  # read from the cache file rather than measured now
    agreement: float | None  # share of held-out images where int8 and float predict the same class
    agreement_n: int


def _float_copy(model: nn.Module) -> nn.Module:
    fold = getattr(model, "fold_batchnorm", None)
    try:
        m = fold() if fold is not None else copy.deepcopy(model)
    except ValueError as err:
        raise UserError(f"--int8 cannot fold this model's batch norm ({err}); drop --int8") from None
    return m.float().cpu().eval()


def _fx_qconfig():
    from torch.ao.quantization import get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping("x86")
    # the classifier head is a tiny matmul and the layer most hurt by rounding; the output scale is one multiply
    mapping.set_object_type(nn.Linear, None)
    mapping.set_object_type(operator.mul, None)
    return mapping


def prepare(model: nn.Module, example: torch.Tensor, model_name: str = "model") -> nn.Module:
    """The model, BN folded, with activation observers in place (still float).

    Models with `fold_batchnorm` (fastnet) give a module with eager-mode quantization stubs: no tracing.
    Others go through FX graph tracing, which works for ordinary conv/BN/ReLU nets but first imports
    ~1.7 s of torch's compiler stack."""
    try:  # PyTorch marks torch.ao's quantized kernels deprecated (torchao replaces them): expect them to go
        from torch.ao.quantization import get_default_qconfig, prepare as prepare_eager
        engines = torch.backends.quantized.supported_engines
    except (ImportError, AttributeError):
        engines = []
    if "x86" not in engines:
        raise UserError(f"this PyTorch ({torch.__version__}) has no x86 int8 kernels; drop --int8")
    torch.backends.quantized.engine = "x86"
    float_model = _float_copy(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's quantization says it is deprecated in favour of torchao
            if hasattr(model, "fold_batchnorm"):
                float_model.qconfig = get_default_qconfig("x86")
                if hasattr(float_model, "head"):
                    float_model.head.qconfig = None  # 10 outputs: cheap in float, the layer most hurt by rounding
                return prepare_eager(float_model)
            from torch.ao.quantization.quantize_fx import prepare_fx

            return prepare_fx(float_model, _fx_qconfig(), example_inputs=(example.float().cpu(),))
    except Exception as err:  # noqa: BLE001 - FX tracing fails in many ways on data-dependent Python
        first = (str(err).splitlines() or [""])[0][:80]
        raise UserError(f"--int8 cannot quantize '{model_name}' ({type(err).__name__}: {first}); it needs a model "
                        "of ordinary convolutions (fastnet, basenet, resnet18...); drop --int8") from None


@torch.inference_mode()
def observe(prepared, images: torch.Tensor, batch_size: int = 256) -> None:
    for i in range(0, len(images), batch_size):
        prepared(images[i:i + batch_size].float())


def convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization import convert as convert_eager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(prepared, torch.fx.GraphModule):
            from torch.ao.quantization.quantize_fx import convert_fx

            return convert_fx(copy.deepcopy(prepared)).eval()
        return convert_eager(copy.deepcopy(prepared)).eval()


def _observer_state(prepared) -> dict:
    return {k: v.clone() for k, v in prepared.state_dict().items() if "activation_post_process" in k}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".int8-calibration.pt")


def _read_cache(path: Path, digest: str) -> dict | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is only a cache: measure again
        return None
    if not isinstance(saved, dict) or saved.get("format") != _CACHE_FORMAT or saved.get("checkpoint_sha256") != digest:
        return None  # made for another checkpoint (the run was resumed or retrained since)
    return saved


def _write_cache(path: Path, saved: dict) -> None:
    import io

    from .runs import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(saved, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # a read-only run folder: calibrate again next time


def _run_images(run) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(calibration images, held-out images or None, source) from the run's own data, or (None, None, reason)."""
    from .data import load_splits

    try:
        splits = load_splits(run.cfg.data)
    except UserError as err:
        return None, None, str(err)
    c, h, w = run.record.image_shape
    if list(splits.classes) != run.classes or tuple(splits.train_x.shape[1:]) != (h, w, c):
        return None, None, "the run's data no longer matches its checkpoint"
    pick = np.random.default_rng(0).permutation(len(splits.train_x))[:CALIBRATION_IMAGES]
    held_out = splits.val_x[:AGREEMENT_IMAGES] if len(splits.val_x) else None
    return splits.train_x[np.sort(pick)], held_out, f"{len(pick):,} of the run's training images"


def int8_model(run, checkpoint: Path, fallback=None) -> tuple[nn.Module, Calibration]:
    """The run's model quantized to int8, calibrated on its own training images (cached per checkpoint).

    fallback: uint8 NHWC images (or a function returning them) to calibrate on when the run's data is
    not on this machine, e.g. the images about to be predicted; such a calibration is not cached."""
    if run.device.type != "cpu":
        raise UserError("--int8 runs on the CPU; on a GPU bf16/fp16 is faster: drop --int8 or pass --device cpu")
    normalise = run.normaliser()
    c, h, w = run.record.image_shape
    example = normalise(torch.zeros(2, h, w, c, dtype=torch.uint8))
    prepared = prepare(run.model, example, run.cfg.model)
    digest = _file_digest(checkpoint)
    cache = cache_path(checkpoint)
    saved = _read_cache(cache, digest)
    if saved is not None:
        try:
            prepared.load_state_dict(saved["observers"], strict=False)
            return convert(prepared), Calibration(saved["source"], True, saved.get("agreement"),
                                                  saved.get("agreement_n", 0))
        except (RuntimeError, KeyError, ValueError):  # written by another PyTorch's observers: measure again
            prepared = prepare(run.model, example, run.cfg.model)
    images, held_out, source = _run_images(run)
    cacheable = images is not None
    if images is None:
        fallback = fallback() if callable(fallback) else fallback
        if fallback is None or not len(fallback):
            raise UserError(f"--int8 needs images to calibrate on and the run's data is not available ({source}); "
                            "pass --data-root/the data, or predict a folder of images")
        images = fallback[:CALIBRATION_IMAGES]
        source = (f"the first {len(images):,} images given (the run's data '{run.cfg.data.spec}' is not usable here, "
                  "so this calibration is not cached)")
    observe(prepared, normalise(torch.from_numpy(np.ascontiguousarray(images))))
    quantized = convert(prepared)
    agreement, n = None, 0
    if held_out is not None:
        agreement, n = _agreement(run, quantized, normalise(torch.from_numpy(np.ascontiguousarray(held_out)))), len(held_out)
    if cacheable:
        _write_cache(cache, {"format": _CACHE_FORMAT, "checkpoint_sha256": digest, "source": source,
                             "agreement": agreement, "agreement_n": n, "observers": _observer_state(prepared)})
    return quantized, Calibration(source, False, agreement, n)


@torch.inference_mode()
def _agreement(run, quantized: nn.Module, images: torch.Tensor, batch_size: int = 256) -> float:
    from . import runtime

    same = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        with runtime.autocast(run.device, run.precision):
            ref = run.model(x).argmax(1)
        same += int((quantized(x.float()).argmax(1) == ref).sum())
    return same / len(images)


def describe(cal: Calibration) -> str:
    text = f"int8: calibrated on {cal.source}" + (" (cached)" if cal.cached else "")
    if cal.agreement is not None:
        text += f"; predicts the float model's class on {cal.agreement:.2%} of {cal.agreement_n:,} held-out images"
    return text
