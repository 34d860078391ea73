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


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N,H,W,C) images in [0,1] units (float64 accumulation)."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].reshape(-1, c).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
