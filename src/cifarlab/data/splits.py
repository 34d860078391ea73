"""Validation splits and normalisation statistics.

Owns the seeded, stratified train/validation split and per-channel mean/std of a
training split. Pure functions of their inputs; never reads files.
"""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class gives round(n_c * val_fraction) images to val.

    Seeded with its own generator so the split never changes with the training seed.
    """
    if val_fraction <= 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)  # every class in both splits when it can be
        else:
            n_val = 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N,H,W,C) images in [0,1] units.

    Exact and fast: a 256-bin histogram per channel (np.bincount) instead of a float
    copy of the data, which would cost 4 bytes per pixel of memory and several times the time.
    """
    c = images.shape[-1]
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for ch in range(c):
        hist = np.bincount(images[..., ch].ravel(), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        mean = float((p * levels).sum())
        var = float((p * (levels - mean) ** 2).sum())
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)
