"""Batched, per-sample augmentation as tensor ops on the training device.

Owns flip, translate (pad + random crop), cutout, RandomResizedCrop, RandomRotation,
RandomAffine and ColorJitter for a whole batch at once, with every random draw
taken from an explicit torch.Generator. Never loops over images in Python and
never touches PIL.

Why not torchvision.transforms.v2: its batched ops draw ONE set of parameters per
call, so per-sample randomness means a Python loop over images (the thing this
module exists to avoid). The maths below follows torchvision's definitions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugmentConfig


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Index reflection without repeating the edge (numpy 'reflect'), for any shift: indices fold back
    and forth with period 2*(size-1), so a shift wider than a tiny image still lands inside it."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = i.abs() % period
    return torch.where(i > size - 1, period - i, i)


def flip_translate(x: torch.Tensor, flip_p: float, shift_px: int, pad: str, gen: torch.Generator,
                   flip: torch.Tensor | None = None) -> torch.Tensor:
    """Horizontal flip + pad-and-random-crop in ONE gather on uint8 (N,H,W,C).

    Equivalent to RandomHorizontalFlip(p) then RandomCrop(size, padding=shift_px,
    padding_mode=pad), but no padded copy is made: each output pixel reads its
    source index directly (reflected, or masked to zero). `flip` (bool per image)
    overrides the coin flips, for the alternating-flip schedule.
    """
    n, h, w, _ = x.shape
    dev = x.device
    coins = torch.rand(n, generator=gen, device=dev) < flip_p
    flip = coins if flip is None else flip
    if shift_px:
        dy = torch.randint(-shift_px, shift_px + 1, (n,), generator=gen, device=dev)
        dx = torch.randint(-shift_px, shift_px + 1, (n,), generator=gen, device=dev)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long, device=dev)
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    cols_src = torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # flip first, then crop
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + cols_src
    if pad == "reflect":
        src_rows, src_cols = _reflect(rows, h), _reflect(cols, w)
    else:
        src_rows, src_cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    # one flat index per output pixel + index_select of C-byte rows: 3x faster than x[n, rows, cols]
    flat = (torch.arange(n, device=dev)[:, None, None] * h + src_rows[:, :, None]) * w + src_cols[:, None, :]
    out = x.reshape(n * h * w, -1).index_select(0, flat.reshape(-1)).view(x.shape)
    if pad == "reflect":
        return out
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    return out * valid[..., None].to(out.dtype)


def _resized_crop_boxes(n, scale, ratio, gen, dev):
    """Width/height fractions and centres as torchvision's RandomResizedCrop samples them.

    Ten tries per image for a box inside the image, then the whole image (its fallback
    for square inputs), all vectorised.
    """
    tries = 10
    area = _uniform(n * tries, scale[0], scale[1], gen, dev).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), gen, dev).view(n, tries)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r)
    h = torch.sqrt(area / r)
    ok = (w <= 1) & (h <= 1)
    first = torch.argmax(ok.int(), dim=1)
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w.gather(1, first[:, None]).squeeze(1), torch.ones(n, device=dev))
    h = torch.where(any_ok, h.gather(1, first[:, None]).squeeze(1), torch.ones(n, device=dev))
    cx = (2 * torch.rand(n, generator=gen, device=dev) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=gen, device=dev) - 1) * (1 - h)
    return w, h, cx, cy


def geometry_params(cfg: AugmentConfig, n: int, gen: torch.Generator, device) -> dict:
    """Draw every per-sample geometric parameter (exposed so tests can check their ranges)."""
    p = {}
    if cfg.resized_crop:
        p["crop_w"], p["crop_h"], p["crop_cx"], p["crop_cy"] = _resized_crop_boxes(
            n, cfg.resized_crop_scale, cfg.resized_crop_ratio, gen, device)
    if cfg.rotation_deg:
        p["angle_deg"] = _uniform(n, -cfg.rotation_deg, cfg.rotation_deg, gen, device)
    if cfg.affine_translate:
        p["shift_x"] = _uniform(n, -cfg.affine_translate, cfg.affine_translate, gen, device)
        p["shift_y"] = _uniform(n, -cfg.affine_translate, cfg.affine_translate, gen, device)
    if cfg.affine_scale != (1.0, 1.0):
        p["scale"] = _uniform(n, cfg.affine_scale[0], cfg.affine_scale[1], gen, device)
    if cfg.affine_shear_deg:
        p["shear_deg"] = _uniform(n, -cfg.affine_shear_deg, cfg.affine_shear_deg, gen, device)
    return p


def sampling_grid_theta(p: dict, n: int, h: int, w: int, device) -> torch.Tensor:
    """(N,2,3) theta for F.affine_grid: output normalised coords -> input normalised coords.

    Forward map (input -> output) is crop-resize, then rotate/shear/scale about the
    centre, then shift, all in pixel units so non-square images rotate rigidly.
    """
    eye = torch.eye(3, device=device).expand(n, 3, 3).clone()
    to_px = torch.diag(torch.tensor([w / 2, h / 2, 1.0], device=device))
    to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], device=device))
    # sampling map for the crop, in normalised coords: input = crop_size * output + centre
    crop = eye.clone()
    if "crop_w" in p:
        crop[:, 0, 0], crop[:, 1, 1] = p["crop_w"], p["crop_h"]
        crop[:, 0, 2], crop[:, 1, 2] = p["crop_cx"], p["crop_cy"]
    fwd = eye.clone()  # forward affine on the cropped image, in pixels about the centre
    if "scale" in p:
        fwd = fwd @ torch.diag_embed(torch.stack([p["scale"], p["scale"], torch.ones(n, device=device)], 1))
    if "shear_deg" in p:
        sh = eye.clone()
        sh[:, 0, 1] = torch.tan(torch.deg2rad(p["shear_deg"]))
        fwd = sh @ fwd
    if "angle_deg" in p:
        a = torch.deg2rad(p["angle_deg"])
        rot = eye.clone()
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
        fwd = rot @ fwd
    if "shift_x" in p:
        tr = eye.clone()
        tr[:, 0, 2], tr[:, 1, 2] = p["shift_x"] * w, p["shift_y"] * h
        fwd = tr @ fwd
    # q_out = to_norm @ fwd @ to_px @ q_in, so sampling needs the inverse; then the crop maps
    # cropped-image coords back to the original image
    theta = crop @ torch.linalg.inv(to_norm @ fwd @ to_px)
    return theta[:, :2, :]


def geometric(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One affine_grid + grid_sample for resized crop, rotation and affine (float NCHW, fill 0)."""
    n, _, h, w = x.shape
    p = geometry_params(cfg, n, gen, x.device)
    if not p:
        return x
    theta = sampling_grid_theta(p, n, h, w, x.device).to(x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_LUMA = (0.299, 0.587, 0.114)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def colour_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """ColorJitter on float [0,1] NCHW with torchvision's blend formulas, per-sample factors.

    Differences from torchvision, on purpose: a fixed order (brightness, contrast,
    saturation, hue) instead of a random permutation, and hue as a rotation of the
    chroma plane in YIQ space (one 3x3 matmul) instead of an RGB->HSV round trip.
    """
    n, c = x.shape[:2]
    dev = x.device

    def factor(strength):
        return _uniform(n, max(0.0, 1 - strength), 1 + strength, gen, dev).view(n, 1, 1, 1).to(x.dtype)

    if cfg.brightness:
        x = (x * factor(cfg.brightness)).clamp_(0, 1)
    if cfg.contrast:
        m = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * factor(cfg.contrast) + m).clamp_(0, 1)
    if cfg.saturation and c == 3:
        g = _grey(x)
        x = ((x - g) * factor(cfg.saturation) + g).clamp_(0, 1)
    if cfg.hue and c == 3:
        angle = _uniform(n, -cfg.hue, cfg.hue, gen, dev) * 2 * math.pi
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
        from_yiq = torch.linalg.inv(to_yiq)
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
        m = (from_yiq @ rot @ to_yiq).to(x.dtype)  # (N,3,3)
        x = torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)
    return x


def cutout(x: torch.Tensor, size_px: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a size_px square per image at a uniform centre (may overlap the border, as in DeVries & Taylor)."""
    n, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (n,), generator=gen, device=dev)
    cx = torch.randint(0, w, (n,), generator=gen, device=dev)
    y0, x0 = cy - size_px // 2, cx - size_px // 2
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    inside = (((ys[None] >= y0[:, None]) & (ys[None] < y0[:, None] + size_px))[:, :, None]
              & ((xs[None] >= x0[:, None]) & (xs[None] < x0[:, None] + size_px))[:, None, :])
    return x * (~inside)[:, None].to(x.dtype)


def epoch_resolution(cfg: AugmentConfig | None, epoch: int) -> int:
    """Training image size of a 0-based epoch under progressive resizing; 0 = the data's own size."""
    if cfg is None:
        return 0
    if cfg.min_res_px and epoch < min(cfg.min_res_epochs, cfg.low_res_epochs):
        return cfg.min_res_px  # e.g. 16 px, then 24 px, then full size
    return cfg.low_res_px if epoch < cfg.low_res_epochs else 0


def resize_batch(x: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """Progressive resizing: a smaller training image costs (size ratio)^2 of the compute per image."""
    if not size or size == x.shape[-1]:
        return x
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class Augmenter:
    """The whole per-batch pipeline: uint8 NHWC in, normalised float NCHW out."""

    def __init__(self, cfg: AugmentConfig | None, mean, std, dtype=torch.float32, channels_last=True):
        self.cfg = cfg
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.dtype = dtype
        self.channels_last = channels_last

    @property
    def has_geometry(self) -> bool:
        c = self.cfg
        return bool(c and (c.resized_crop or c.rotation_deg or c.affine_translate or c.affine_shear_deg
                           or c.affine_scale != (1.0, 1.0)))

    @property
    def has_colour(self) -> bool:
        c = self.cfg
        return bool(c and (c.brightness or c.contrast or c.saturation or c.hue))

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
        """x: uint8 (N,H,W,C) on the target device. gen=None means no augmentation (evaluation).

        flip: optional per-image bool mask that replaces the random flips (alternating flip).
        """
        cfg = self.cfg if gen is not None else None
        if cfg and (cfg.flip or cfg.translate_px):
            x = flip_translate(x, cfg.flip, cfg.translate_px, cfg.translate_pad, gen, flip if cfg.flip else None)
        # NHWC -> NCHW view: the memory stays channels_last, which is what convolutions want
        x = x.permute(0, 3, 1, 2).float().div_(255)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if cfg and cfg.normalize_first:
            # report 002's order: the jitter then clamps normalised values to [0, 1] (as torchvision's does on
            # float tensors), dropping everything below the mean, before the second normalisation below
            x = (x - mean) / std
        if cfg and self.has_geometry:
            x = geometric(x, cfg, gen)
        if cfg and self.has_colour:
            x = colour_jitter(x, cfg, gen)
        x = (x - mean) / std
        if cfg and cfg.cutout_px:
            x = cutout(x, cfg.cutout_px, gen)
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
