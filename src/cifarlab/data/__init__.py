"""Data layer: turn a --data spec into uint8 train/validation arrays plus normalisation.

Flow: spec -> source (named set or image folder) -> decode-once cache -> split ->
stats. Everything here is numpy on the host; the loader moves it to the device.
Never augments and never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import UserError
from . import archive, cache, folder, pixels
from .named import NAMED_SETS, load_named
from .splits import channel_stats, stratified_split

__all__ = ["Splits", "load_splits", "locate_folder", "load_folder_for_eval", "convert_channels", "resize_images", "NAMED_SETS"]


@dataclass
class Splits:
    """What training needs: uint8 (N,H,W,C) arrays, labels, classes and normalisation."""
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    classes: list[str]
    val_source: str  # "test split", "val folder", "held-out 10% of train", or "none"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the model sees it."""
        _, h, w, c = self.train_x.shape
        return c, h, w


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N,H,W,C) to `channels` (0 = unchanged): grey repeats to RGB, RGB goes to luma."""
    return pixels.to_channels(images, channels)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N,H,W,C) to size x size with bilinear PIL resampling (0 = unchanged)."""
    return pixels.resize(images, size) if size else images


def _decode_folder_cached(split_dir: Path, cfg: DataConfig, classes: list[str] | None = None):
    files = folder.list_files(split_dir, classes)
    options = {"channels": cfg.channels, "image_size": cfg.image_size, "skip_bad": cfg.skip_bad_images,
               "classes": files.classes}
    cache_dir = Path(cfg.root).expanduser() / "cache"
    key = cache.cache_key(split_dir, files.paths, options) if cfg.cache else None
    hit = cache.load(cache_dir, key) if key else None
    if hit is not None:
        notes = [str(n) for n in hit.get("notes", np.array([], dtype=str))]
        return hit["images"], hit["labels"], files.classes, notes
    decoded = folder.decode_files(files, cfg.channels, cfg.image_size, cfg.skip_bad_images)
    if key:
        cache.save(cache_dir, key, {"images": decoded.images, "labels": decoded.labels,
                                    "notes": np.array(decoded.notes, dtype=str)})
    return decoded.images, decoded.labels, files.classes, decoded.notes


def locate_folder(spec: str, root: str) -> tuple[Path, Path | None]:
    """(train_dir, test_dir or None) of a folder or archive --data spec; a misspelt named set or a missing
    path is one line naming the fix."""
    if spec.lower() in NAMED_SETS or spec.lower().replace("_", "-") in NAMED_SETS:
        raise UserError(f"unknown data set '{spec}'; did you mean '{spec.lower().replace('_', '-')}'? "
                        f"named sets: {', '.join(NAMED_SETS)}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"--data '{spec}' is neither a named set ({', '.join(NAMED_SETS)}) nor an existing folder; "
                        f"pass --data PATH to a folder of images")
    if archive.is_archive(path):
        path = archive.extracted_folder(path, Path(root).expanduser())
    return folder.find_layout(path)


def _load_source(cfg: DataConfig):
    """-> (train_x, train_y, test_x|None, test_y|None, classes, test_name, notes)."""
    if cfg.spec in NAMED_SETS:
        tx, ty, vx, vy, classes = load_named(cfg.spec, Path(cfg.root).expanduser())
        return tx, ty, vx, vy, classes, "test split", []
    train_dir, test_dir = locate_folder(cfg.spec, cfg.root)
    tx, ty, classes, notes = _decode_folder_cached(train_dir, cfg)
    if test_dir is None:
        return tx, ty, None, None, classes, None, notes
    vx, vy, _, vnotes = _decode_folder_cached(test_dir, cfg, classes)
    if vx.shape[1:] != tx.shape[1:]:
        vx = convert_channels(resize_images(vx, tx.shape[1]), tx.shape[-1])
    return tx, ty, vx, vy, classes, f"{test_dir.name} folder", notes + vnotes


def load_splits(cfg: DataConfig) -> Splits:
    """Load the data a run trains and validates on, as described by cfg."""
    tx, ty, vx, vy, classes, test_name, notes = _load_source(cfg)
    tx = convert_channels(resize_images(tx, cfg.image_size), cfg.channels)
    if vx is not None:
        vx = convert_channels(resize_images(vx, cfg.image_size), cfg.channels)
        val_source = test_name
    elif cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(ty, cfg.val_fraction, cfg.split_seed)
        tx, ty, vx, vy = tx[train_idx], ty[train_idx], tx[val_idx], ty[val_idx]
        val_source = f"held-out {cfg.val_fraction:.0%} of train (split_seed {cfg.split_seed})"
    else:
        vx, vy = tx[:0], ty[:0]
        val_source = "none"
    c = tx.shape[-1]
    if cfg.normalize == "dataset":
        mean, std = channel_stats(tx)
    elif cfg.normalize == "fixed":
        mean, std = _per_channel(cfg.mean, c, "data.mean"), _per_channel(cfg.std, c, "data.std")
    else:
        mean, std = (0.0,) * c, (1.0,) * c
    return Splits(tx, ty, vx, vy, list(classes), val_source, mean, std, notes)


def _per_channel(values: tuple, c: int, key: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values) * c
    if len(values) != c:
        raise UserError(f"config key '{key}' has {len(values)} values but the images have {c} channel(s); give 1 or {c}")
    return tuple(values)


def load_folder_for_eval(path: str | Path, classes: list[str], image_shape: tuple[int, int, int],
                         cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A labelled folder PATH/<class>/* (class names from training) shaped like the training images."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"evaluation folder not found: {path}; pass --data PATH laid out PATH/<class>/*")
    c, h, _ = image_shape
    x, y, _, notes = _decode_folder_cached(path, cfg, classes)
    return convert_channels(resize_images(x, h), c), y, notes
