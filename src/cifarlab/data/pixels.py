"""Pixel-level conversions of uint8 images: channel count and size.

Owns the one rule for grey <-> RGB (PIL's own integer luma, so a folder converted at decode time and an
array converted later agree to the bit) and the one resampling for resizing (PIL bilinear). Works on a
single (H,W,C) image or a batch (N,H,W,C). Never reads files.
"""

from __future__ import annotations

import numpy as np


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (...,H,W,C) with `channels` channels (0 = unchanged): grey is repeated to RGB, RGB becomes
    ITU-R 601 luma exactly as PIL's convert("L") computes it ((19595 R + 38470 G + 7471 B + 2^15) >> 16)."""
    if channels == 0 or images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    rgb = images.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def resize(images: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """uint8 (...,H,W,C) resized to height x width (square when width is None) with PIL's bilinear filter;
    returned unchanged when it already has that size."""
    from PIL import Image

    width = width or height
    if images.shape[-3:-1] == (height, width):
        return images
    single = images.ndim == 3
    batch = images[None] if single else images
    out = np.empty((len(batch), height, width, batch.shape[-1]), dtype=np.uint8)
    for i, a in enumerate(batch):
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).resize((width, height), Image.BILINEAR)
        out[i] = np.asarray(img).reshape(height, width, -1)
    return out[0] if single else out
