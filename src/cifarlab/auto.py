"""The automatic defaults: what `cifarlab train --data X` trains when nothing else was chosen.

Owns a cheap look at the data (image count, classes, size, channels: file headers only, no decode)
and the few rules that turn it into config keys, each with the one line that says why. The rules
do not look at the device: they were measured on a CPU, where fastnet's width decides the time; the
recipes they pick run on a GPU as they are (evaluation batch and precision follow the device). The rules come from measurements on subsets of real data (docs/RESULTS.md, "Automatic
defaults"; benchmarks/auto_defaults.py). Never trains and never decodes a whole folder.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field

from .config import DataConfig

AUTO = "auto"  # the recipe name a run records when these rules chose its settings

_HEADER_SAMPLE = 64  # file headers read to find a folder's usual image size and colour


@dataclass(frozen=True)
class DataProfile:
    """What the rules look at: the images a run will train on, as the model will see them."""
    spec: str
    num_train: int
    num_classes: int
    height: int
    width: int
    channels: int
    has_test_split: bool

    def describe(self) -> str:
        return (f"{self.num_train:,} training images, {self.num_classes} classes, "
                f"{self.channels}x{self.height}x{self.width}")


@dataclass
class Choice:
    """The chosen keys (dotted), the recipe they start from, and one reason per rule."""
    recipe: str
    overrides: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def profile_data(cfg: DataConfig) -> DataProfile:
    """Count and size the training images of cfg.spec without decoding them."""
    from .data import NAMED_SETS

    if cfg.spec in NAMED_SETS:
        n, classes, h, w, c = NAMED_SETS[cfg.spec].shape
        has_test = True
    else:
        n, classes, h, w, c, has_test = _folder_facts(cfg.spec, cfg.root)
    if not has_test and cfg.val_fraction > 0:
        n -= math.ceil(n * cfg.val_fraction)  # the run holds this share out
    if cfg.image_size:
        h = w = cfg.image_size
    return DataProfile(cfg.spec, n, classes, h, w, cfg.channels or c, has_test)


@functools.lru_cache(maxsize=8)
def _folder_facts(spec: str, root: str) -> tuple[int, int, int, int, int, bool]:
    """(images, classes, usual height, usual width, channels, has a test folder) from file headers."""
    from PIL import Image

    from .data import folder, locate_folder

    train_dir, test_dir = locate_folder(spec, root)
    files = folder.list_files(train_dir)
    step = max(1, len(files.paths) // _HEADER_SAMPLE)
    sizes, grey = Counter(), 0
    for p in files.paths[::step][:_HEADER_SAMPLE]:
        try:
            with Image.open(p) as img:  # reads the header only
                sizes[img.size] += 1
                grey += img.mode in folder.GREY_MODES
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # the decoder reports bad files (and bombs) properly; a sample only needs the good ones
    w, h = sizes.most_common(1)[0][0] if sizes else (32, 32)
    c = 1 if grey and grey == sum(sizes.values()) else 3
    return len(files.paths), len(files.classes), h, w, c, test_dir is not None


# ---------------------------------------------------------------- the rules

# At or above this many training images of CIFAR's or Fashion-MNIST's shape, the speed-run recipe tuned on
# 45,000-60,000 images is used exactly (`fast`, `fast-fmnist`)
SPEEDRUN_MIN_IMAGES = 40_000
# larger images are resized to this side: fastnet's cost grows with the pixel count
MAX_SIDE = 64
# smaller ones are resized up to this: fastnet halves its maps three times
MIN_SIDE = 16


# fastnet's widths below the speed-run size: half of fast's (a quarter of its cost) for colour images, a
# quarter for small grey ones (as fast-fmnist)
HALF_WIDTHS = [32, 128, 128]
GREY_WIDTHS = [32, 64, 64]


def images_seen_budget(n: int) -> int:
    """Training images shown over the whole run: grows with the data, slower than it (~sqrt)."""
    return int(1000 * math.sqrt(n))


def describe_rules() -> list[str]:
    """The rules in words, for `cifarlab recipes auto`."""
    return [
        f"- {SPEEDRUN_MIN_IMAGES:,}+ colour images of 32x32: recipe fast, unchanged",
        f"- {SPEEDRUN_MIN_IMAGES:,}+ grey images of 28x28: recipe fast-fmnist, unchanged (MNIST: without flips)",
        "- anything else: fast's net and optimizer, adapted:",
        f"  images larger than {MAX_SIDE} px resized to {MAX_SIDE}x{MAX_SIDE} (smaller than {MIN_SIDE} px: up to "
        f"{MIN_SIDE}x{MIN_SIDE}); fastnet widths 32/128/128 "
        "(grey images up to 32 px: 32/64/64)",
        "  optimizer steps of up to 1024 images, halved until an epoch has >= 8 (at least 64), learning rates "
        "scaled from 1024",
        "  epochs = 1000*sqrt(images) / images, between 7 and 200 (a budget of images seen that grows with the data)",
        "see what it picks for your data: cifarlab train --data PATH --print-config",
    ]


def choose(profile: DataProfile) -> Choice:
    """The settings for `profile`, with why."""
    shape = (profile.channels, profile.height, profile.width)
    big = profile.num_train >= SPEEDRUN_MIN_IMAGES
    if big and shape == (3, 32, 32):
        return Choice("fast", {}, [f"{profile.describe()}: CIFAR-sized colour images, enough of them for the "
                                   f"speed-run recipe `fast` as it is (about 90% on CIFAR-10, docs/RESULTS.md)"])
    if big and shape == (1, 28, 28):
        choice = Choice("fast-fmnist", {}, [f"{profile.describe()}: 28x28 grey images, enough of them for the "
                                            f"speed-run recipe `fast-fmnist` as it is (93% on Fashion-MNIST)"])
        _flip_rule(profile, choice)
        return choice
    choice = Choice("fast", {}, [f"{profile.describe()}: the speed-run recipe `fast` (fastnet, Muon), "
                                 f"scaled to the data by the rules below"])
    _size_rule(profile, choice)
    _batch_and_budget_rule(profile, choice)
    _flip_rule(profile, choice)
    return choice


def _size_rule(p: DataProfile, choice: Choice) -> None:
    side = max(p.height, p.width)
    if side > MAX_SIDE:
        choice.overrides["data.image_size"] = MAX_SIDE
        choice.reasons.append(f"images are {p.width}x{p.height}: resized to {MAX_SIDE}x{MAX_SIDE} "
                              f"(cost grows with the pixels; set data.image_size=N to keep more)")
    elif min(p.height, p.width) < MIN_SIDE:
        choice.overrides["data.image_size"] = MIN_SIDE
        choice.reasons.append(f"images are {p.width}x{p.height}: resized to {MIN_SIDE}x{MIN_SIDE} "
                              f"(fastnet halves its feature maps three times)")
    if p.channels == 1 and side <= 32:
        choice.overrides["model_args.widths"] = GREY_WIDTHS
        choice.reasons.append("small grey images: fastnet at widths 32/64/64, as fast-fmnist")
    else:
        choice.overrides["model_args.widths"] = HALF_WIDTHS
        choice.reasons.append(f"under {SPEEDRUN_MIN_IMAGES:,} images: fastnet at half of fast's widths "
                              f"(32/128/128), as accurate here at a third of the time")
    # progressive resizing trains early epochs at 16/24 px: tuned for 32 px images only
    choice.overrides.update({"augment.low_res_epochs": 0, "augment.min_res_epochs": 0})


def _batch_and_budget_rule(p: DataProfile, choice: Choice) -> None:
    # at least ~8 optimizer steps an epoch: a 1024-image step would be one step per epoch on 1,000 images
    batch = 1024
    while batch > 64 and p.num_train < 8 * batch:
        batch //= 2
    budget = images_seen_budget(p.num_train)
    epochs = max(7, min(200, round(budget / max(p.num_train, 1))))
    micro = min(batch, 256)  # batch norm over at most 256 images, as `fast`
    choice.overrides.update({"batch_size": micro, "accumulate_steps": batch // micro, "epochs": epochs,
                             "optim.lr_reference_batch": 1024})
    choice.reasons.append(f"{p.num_train:,} images: optimizer steps of {batch} (8 or more an epoch where the data "
                          f"allows, at least 64), learning rates scaled from fast's 1024; {epochs} epochs, about "
                          f"{epochs * p.num_train:,} images seen (budget 1000*sqrt(images), 7-200 epochs)")


def _flip_rule(p: DataProfile, choice: Choice) -> None:
    from .data import NAMED_SETS

    if p.spec in NAMED_SETS and not NAMED_SETS[p.spec].mirror_safe:
        choice.overrides.update({"augment.flip": 0.0, "tta": "none"})
        choice.reasons.append(f"{p.spec}: no mirror flips (a mirrored digit is no longer the same digit)")
