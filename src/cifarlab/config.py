"""Typed, frozen run configuration: defaults, YAML in/out, dotted overrides, validation.

Owns what a run is allowed to be configured with and the error a user sees for a
bad key or value. Never touches data, models or the file system beyond reading a
YAML file it is given.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def _f(default, help: str, *, choices=None, ge=None, gt=None, le=None, lt=None, length=None):
    """A dataclass field with its allowed values stored beside it (checked by validate())."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "length": length}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    spec: str = _f("cifar10", "cifar10 | cifar100 | fashion-mnist | mnist | PATH to an image folder")
    root: str = _f("~/.cache/cifarlab", "where torchvision data sets and the decode cache live")
    val_fraction: float = _f(0.1, "held-out stratified share of train when the data has no test/val split; 0 = train on all", ge=0.0, lt=1.0)
    split_seed: int = _f(0, "seed of the validation split (kept apart from the training seed)", ge=0)
    normalize: str = _f("dataset", "dataset: per-channel mean/std of the training split; fixed: use mean/std below; none", choices=["dataset", "fixed", "none"])
    mean: tuple = _f((0.5,), "per-channel mean in [0,1] units when normalize=fixed (one value = all channels)")
    std: tuple = _f((0.5,), "per-channel std in [0,1] units when normalize=fixed", gt=0.0)
    channels: int = _f(0, "0 = as stored; 1 = convert to grey; 3 = expand grey to RGB", choices=[0, 1, 3])
    image_size: int = _f(0, "0 = keep the stored size (mixed folder sizes go to the most common one); N = resize to NxN", ge=0)
    cache: bool = _f(True, "keep a decoded uint8 copy of image folders under root/cache")
    skip_bad_images: bool = _f(False, "skip undecodable files in image folders (counted) instead of stopping")


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = _f(0.5, "probability of a horizontal flip", ge=0.0, le=1.0)
    flip_mode: str = _f("random", "random: a fresh coin per image per epoch; alternate: a fixed random half flips on even "
                        "epochs and the other half on odd ones (every image seen both ways in 2 epochs)",
                        choices=["random", "alternate"])
    translate_px: int = _f(2, "pad + random crop: max shift in pixels each way", ge=0)
    translate_pad: str = _f("reflect", "padding for the translate crop", choices=["reflect", "zeros"])
    cutout_px: int = _f(0, "side of a random square set to zero (0 = off)", ge=0)
    resized_crop: bool = _f(False, "RandomResizedCrop: random area/aspect crop resized back to full size")
    resized_crop_scale: tuple = _f((0.08, 1.0), "area fraction range of the resized crop", gt=0.0, le=1.0, length=2)
    resized_crop_ratio: tuple = _f((0.75, 4 / 3), "aspect ratio range of the resized crop", gt=0.0, length=2)
    rotation_deg: float = _f(0.0, "RandomRotation: uniform angle in +-deg", ge=0.0, le=180.0)
    affine_translate: float = _f(0.0, "RandomAffine: max shift as a fraction of the image side", ge=0.0, lt=1.0)
    affine_scale: tuple = _f((1.0, 1.0), "RandomAffine: zoom range", gt=0.0, length=2)
    affine_shear_deg: float = _f(0.0, "RandomAffine: max x-shear in degrees", ge=0.0, lt=90.0)
    brightness: float = _f(0.0, "ColorJitter: factor drawn from [1-b, 1+b]", ge=0.0)
    contrast: float = _f(0.0, "ColorJitter: factor drawn from [1-c, 1+c]", ge=0.0)
    saturation: float = _f(0.0, "ColorJitter: factor drawn from [1-s, 1+s]", ge=0.0)
    hue: float = _f(0.0, "ColorJitter: hue shift in [-h, h] turns", ge=0.0, le=0.5)
    low_res_px: int = _f(0, "progressive resizing: train the first low_res_epochs at this size (0 = off)", ge=0)
    low_res_epochs: int = _f(0, "progressive resizing: how many epochs run at low_res_px", ge=0)
    min_res_px: int = _f(0, "progressive resizing: the first min_res_epochs of those run at this even smaller size", ge=0)
    min_res_epochs: int = _f(0, "progressive resizing: how many of the low_res_epochs run at min_res_px", ge=0)
    normalize_first: bool = _f(False, "training images are also normalised BEFORE rotation/affine/colour jitter "
                               "(report 002's Normalize, RandomAffine, ColorJitter, Normalize order)")


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("sgd", "optimizer (muon: Muon on conv filters, Nesterov SGD on the rest)",
                   choices=["sgd", "adam", "adamw", "rmsprop", "asgd", "muon"])
    lr: float = _f(0.1, "peak learning rate (see lr_reference_batch)", gt=0.0)
    lr_reference_batch: int = _f(0, "if > 0, lr is for this batch and is scaled linearly to batch_size*accumulate_steps", ge=0)
    momentum: float = _f(0.9, "SGD / RMSprop momentum", ge=0.0, lt=1.0)
    nesterov: bool = _f(True, "Nesterov momentum (SGD)")
    weight_decay: float = _f(5e-4, "L2 weight decay (decoupled for adamw)", ge=0.0)
    bias_lr_scale: float = _f(1.0, "lr multiplier for biases and norm parameters (speed-runs use ~64)", gt=0.0)
    decay_bias: bool = _f(False, "also decay biases and norm parameters (with the same lr*wd product)")
    betas: tuple = _f((0.9, 0.999), "Adam/AdamW betas", ge=0.0, lt=1.0, length=2)
    eps: float = _f(1e-8, "Adam/AdamW/RMSprop epsilon", gt=0.0)
    alpha: float = _f(0.99, "RMSprop smoothing constant", gt=0.0, lt=1.0)
    asgd_lambd: float = _f(1e-4, "ASGD decay term", ge=0.0)
    asgd_t0: float = _f(1e6, "ASGD: step at which averaging starts", ge=0.0)
    muon_lr: float = _f(0.24, "Muon: step size for conv filters (scale-free: weights are kept at unit RMS)", gt=0.0)
    muon_momentum: float = _f(0.6, "Muon: Nesterov momentum for conv filters", ge=0.0, lt=1.0)
    router_lr: float = _f(0.0, "Muon: lr of mix-conv routers (0 = optim.lr)", ge=0.0)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = _f("onecycle", "constant | cosine | onecycle (warmup + linear decay) | step | plateau", choices=["constant", "cosine", "onecycle", "step", "plateau"])
    warmup_epochs: float = _f(1.0, "linear warmup (cosine, onecycle, constant); capped at half the run", ge=0.0)
    warmup_start: float = _f(0.0, "lr at the first warmup step as a fraction of the peak", ge=0.0, le=1.0)
    t_max_epochs: float = _f(0.0, "cosine period in epochs (0 = the run's epochs)", ge=0.0)
    eta_min: float = _f(0.0, "cosine floor learning rate", ge=0.0)
    final_lr_fraction: float = _f(0.0, "onecycle: lr at the last step as a fraction of the peak", ge=0.0, le=1.0)
    step_epochs: int = _f(30, "step: epochs between decays", gt=0)
    gamma: float = _f(0.1, "step: decay factor", gt=0.0, le=1.0)
    plateau_monitor: str = _f("val_loss", "plateau: metric watched (train_loss if there is no validation split)", choices=["val_loss", "val_acc", "train_loss"])
    plateau_mode: str = _f("min", "plateau: min for losses, max for accuracy", choices=["min", "max"])
    plateau_factor: float = _f(0.1, "plateau: lr multiplier", gt=0.0, lt=1.0)
    plateau_patience: int = _f(10, "plateau: epochs without improvement before a cut", ge=0)
    plateau_threshold: float = _f(1e-4, "plateau: relative improvement that counts", ge=0.0)
    per_epoch: bool = _f(False, "hold the lr for a whole epoch, changing it only at epoch boundaries "
                         "(a torch scheduler stepped once per epoch); false: a new lr every optimizer step")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    recipe: str = _f("", "the named recipe this config started from (set by --recipe; a seed recipe's run "
                     "shows its report's result beside its own)")
    model: str = _f("resnet18", "registered model name (cifarlab models)")
    model_args: dict = _f({}, "keyword arguments for the model, e.g. model_args.width=32")
    init: str = _f("default", "re-initialise conv/linear weights: default keeps the model's own init",
                   choices=["default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform"])
    init_layers: str = _f("all", "which layers `init` re-initialises (biases of those go to zero)",
                          choices=["all", "conv", "linear"])
    epochs: int = _f(10, "passes over the training split", gt=0)
    batch_size: int = _f(256, "images per forward pass (global across DDP ranks)", gt=0)
    drop_last: bool = _f(True, "drop each epoch's last partial training batch (a tiny batch upsets batch norm); "
                         "false trains on every image each epoch, as PyTorch's DataLoader does by default")
    accumulate_steps: int = _f(1, "forward passes per optimizer step (effective batch = batch_size * this)", gt=0)
    eval_batch_size: int = _f(0, "images per evaluation forward pass (0 = 256 on a CPU, where small batches stay in "
                              "cache and ran up to 1.9x faster than 2000, and 1024 on a GPU)", ge=0)
    label_smoothing: float = _f(0.1, "cross-entropy label smoothing", ge=0.0, lt=1.0)
    label_smoothing_to: str = _f("all", "where the smoothed mass goes: all classes (PyTorch: target 1-s+s/C, "
                                 "others s/C) or only the others (target 1-s, others s/(C-1))",
                                 choices=["all", "others"])
    clip_grad_norm: float = _f(0.0, "max global gradient norm (0 = off)", ge=0.0)
    skip_nonfinite_batches: int = _f(0, "batches with a NaN/inf loss to skip (counted in metrics) before stopping; 0 = stop at the first", ge=0)
    bn_recalibrate: int = _f(0, "before each evaluation, recompute batch-norm statistics from this many training "
                             "images under the current weights (precise BN; the running averages' score is kept as "
                             "val_acc_running_bn); 0 = use the running averages", ge=0)
    eval_bn_stats: str = _f("running", "how evaluation normalises with batch norm: running (eval mode: the averages "
                            "training kept) or batch (each evaluation batch by its own statistics, as a validation "
                            "loop that never calls model.eval() does; batches in a fixed random order)",
                            choices=["running", "batch"])
    ema_decay: float = _f(0.0, "EMA of weights per optimizer step (0 = off); evaluation uses the EMA", ge=0.0, lt=1.0)
    tta: str = _f("none", "test-time augmentation at evaluation: flip, or flip + 1px translations",
                  choices=["none", "flip", "flip_translate"])
    precision: str = _f("auto", "auto: bf16 where the CPU/GPU has it, else fp32", choices=["auto", "fp32", "bf16", "fp16"])
    channels_last: bool = _f(True, "NHWC memory format for convolutions")
    compile: bool = _f(False, "torch.compile the model (about 25 s once; faster steps after)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    seed: int = _f(0, "seed for init, shuffling and augmentation; same seed = same CPU run", ge=0)
    threads: int = _f(0, "torch intra-op threads (0 = torch default)", ge=0)
    mlflow: str = _f("", "track the run in MLflow: a tracking URI (http://..., sqlite:///...), or local for a "
                     "SQLite store beside the run folders (mlflow.db); empty = off (pip install 'cifarlab[mlflow]')")
    mlflow_checkpoints: bool = _f(False, "with mlflow: also upload checkpoints/best.pt as an artifact")
    keep_checkpoints: int = _f(0, "also keep every Nth epoch's checkpoint as checkpoints/epoch-NNN.pt, to study the "
                               "weights over training (cifarlab eval RUN --checkpoint 10); 0 = best and last only",
                               ge=0)
    tensorboard: bool = _f(False, "also write TensorBoard scalars to RUN_DIR/tensorboard (pip install 'cifarlab[tensorboard]')")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "optim": OptimConfig, "schedule": ScheduleConfig}


def _plain(obj):
    """Tuples become lists so YAML/JSON stay plain."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- value coercion

def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Turn a YAML-parsed value into the field's type, or raise a one-line UserError."""
    def bad(expected: str):
        return UserError(f"config key '{key}' expects {expected}; got {value!r}")

    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("true or false")
    if typ is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad("an integer")
    if typ is float:
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise bad("a finite number")
            return float(value)
        if isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise bad("a number") from None
            if not math.isfinite(out):
                raise bad("a finite number")
            return out
        raise bad("a number")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if typ is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(key, v, float) for v in items)
    if typ is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad("a mapping")
    raise AssertionError(f"unhandled config type {typ} for {key}")


def _check_range(key: str, value: Any, meta: dict) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    values = value if isinstance(value, tuple) else (value,)
    length = meta.get("length")
    if length is not None and len(values) != length:
        raise UserError(f"config key '{key}' expects {length} numbers; got {list(values)}")
    if isinstance(value, tuple) and not values:
        raise UserError(f"config key '{key}' expects at least one number")
    for v in values:
        for name, (holds, word) in _BOUNDS.items():
            bound = meta.get(name)
            if bound is not None and not holds(v, bound):
                raise UserError(f"config key '{key}' must be {word} {bound}; got {v!r}")


_BOUNDS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def _fields(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def _build(cls, values: dict, prefix: str):
    fields = _fields(cls)
    kwargs = {}
    for name, raw in values.items():
        key = prefix + name
        if name not in fields:
            allowed = ", ".join(fields)
            where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
            raise UserError(f"unknown config key '{key}'; allowed {where}: {allowed}")
        f = fields[name]
        if f.type in SECTIONS.values():
            if not isinstance(raw, dict):
                raise UserError(f"config key '{key}' is a section; set its fields, e.g. {key}.{next(iter(_fields(f.type)))}=...")
            kwargs[name] = _build(f.type, raw, key + ".")
        else:
            value = _coerce(key, raw, f.type)
            _check_range(key, value, f.metadata)
            kwargs[name] = value
    return cls(**kwargs)


def _check_consistency(cfg: Config) -> None:
    """Cross-field rules a single field cannot express."""
    if cfg.augment.resized_crop_scale[0] > cfg.augment.resized_crop_scale[1]:
        raise UserError("config key 'augment.resized_crop_scale' must be (low, high) with low <= high")
    if cfg.augment.resized_crop_ratio[0] > cfg.augment.resized_crop_ratio[1]:
        raise UserError("config key 'augment.resized_crop_ratio' must be (low, high) with low <= high")
    if cfg.augment.affine_scale[0] > cfg.augment.affine_scale[1]:
        raise UserError("config key 'augment.affine_scale' must be (low, high) with low <= high")
    if cfg.eval_bn_stats == "batch" and cfg.bn_recalibrate:
        raise UserError("eval_bn_stats=batch normalises each evaluation batch by itself, so bn_recalibrate has "
                        "nothing to recompute; set one of them")
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device == "cuda" or cfg.device.startswith("cuda:")):
        raise UserError(f"config key 'device' must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")


# ---------------------------------------------------------------- public API

def merge(base: dict, update: dict) -> dict:
    """Deep-merge update into a copy of base (nested dicts merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model_args":
            out[k] = merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def dotted_to_nested(dotted: dict) -> dict:
    """{'optim.lr': 0.1} -> {'optim': {'lr': 0.1}}."""
    out: dict = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"config key '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return out


def format_value(v) -> str:
    """A config value as one short token (experiment folder names, tables, plot labels): 0.001 -> '0.001',
    [32, 64] -> '[32,64]'."""
    import json

    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def nested_to_dotted(nested: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1} (an empty section stays as one key)."""
    out = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(nested_to_dotted(v, key + "."))
        else:
            out[key] = v
    return out


# keys that change where or how fast a run computes, not what it is: a resumed run may change them, and
# `cifarlab compare` does not list them as a difference between runs
# (model_args.form: which exact form a mix-conv layer computes in, tested equal in float64)
NON_RESULT_KEYS = frozenset({"device", "threads", "compile", "eval_batch_size", "tensorboard", "mlflow",
                             "mlflow_checkpoints", "keep_checkpoints", "data.root", "model_args.form"})


def parse_override(item: str) -> tuple[str, Any]:
    """'optim.lr=0.01' -> ('optim.lr', 0.01): the key, and the text parsed as a YAML scalar."""
    if "=" not in item:
        raise UserError(f"override '{item}' must look like key=value, e.g. optim.lr=0.01")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise UserError(f"override '{item}' has no key; write key=value, e.g. epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def parse_overrides(items: list[str]) -> dict:
    """['optim.lr=0.01', 'epochs=5'] -> nested dict; values are parsed as YAML scalars."""
    return dotted_to_nested(dict(parse_override(item) for item in items))


def typed_value(key: str, value: Any) -> Any:
    """A parsed override value in its field's type ('1e-3' -> 0.001 for a float key); values of unknown
    keys (model_args.*) only get YAML 1.1's unquoted exponent notation read as a number."""
    cls, parts = Config, key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(cls)
        if part not in fields:
            break
        typ = fields[part].type
        if typ in SECTIONS.values() and i < len(parts) - 1:
            cls = typ
            continue
        if i == len(parts) - 1 and typ not in SECTIONS.values():
            return _plain(_coerce(key, value, typ))
        break
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def from_dict(values: dict) -> Config:
    """Build and validate a Config from a nested dict (missing keys take defaults)."""
    if not isinstance(values, dict):
        raise UserError("a config must be a mapping of keys to values")
    cfg = _build(Config, values, "")
    _check_consistency(cfg)
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}; pass --config to an existing YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return values


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every config key, for `cifarlab train --help-config`."""
    rows = []

    def walk(cls, prefix):
        for name, f in _fields(cls).items():
            if f.type in SECTIONS.values():
                walk(f.type, prefix + name + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + name, repr(_plain(default)), f.metadata.get("help", "")))

    walk(Config, "")
    return rows
