"""Each augmentation is checked by its statistics and against a reference, not only by shapes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifarlab.augment import (Augmenter, colour_jitter, cutout, flip_translate, geometric, geometry_params,
                              sampling_grid_theta)
from cifarlab.config import AugmentConfig


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def coded_images(n, h=8, w=8):
    """uint8 NHWC images whose pixel value encodes its (row, col): channel0 = row*w+col, channel1 = index."""
    code = torch.arange(h * w, dtype=torch.uint8).view(1, h, w, 1).expand(n, h, w, 1)
    idx = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, h, w, 1)
    return torch.cat([code, idx, code], dim=3).contiguous()


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_fraction(p):
    x = coded_images(4000)
    out = flip_translate(x, p, 0, "reflect", gen(1))
    flipped = (out[:, 0, 0, 0] == 7)  # top-left now holds the top-right code
    same = (out[:, 0, 0, 0] == 0)
    assert bool((flipped | same).all())
    assert abs(flipped.float().mean().item() - p) < 0.03
    assert torch.equal(out[flipped], x[flipped].flip(2))


@pytest.mark.parametrize("pad", ["reflect", "zeros"])
def test_translate_offsets_and_padding(pad):
    r, n, h, w = 3, 3000, 8, 8
    x = coded_images(n, h, w)
    out = flip_translate(x, 0.0, r, pad, gen(2))
    # recover each image's shift from the centre pixel, which is never padding for r < h/2
    centre = out[:, h // 2, w // 2, 0].long()
    dy, dx = centre // w - h // 2, centre % w - w // 2
    assert dy.abs().max() <= r and dx.abs().max() <= r
    assert sorted(set(dy.tolist())) == list(range(-r, r + 1))  # every offset occurs
    counts = torch.bincount(dx + r).float()
    assert counts.min() / counts.max() > 0.8  # roughly uniform
    # compare every image with numpy's padding + crop for the recovered offsets
    mode = "reflect" if pad == "reflect" else "constant"
    padded = np.pad(x.numpy(), ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
    for i in range(0, n, 97):
        ref = padded[i, r + dy[i]: r + dy[i] + h, r + dx[i]: r + dx[i] + w]
        assert np.array_equal(out[i].numpy(), ref)


def test_cutout_area():
    x = torch.ones(2000, 3, 16, 16)
    out = cutout(x, 6, gen(3))
    zeroed = (out[:, 0] == 0).float().sum(dim=(1, 2))
    assert zeroed.max() == 36 and zeroed.min() >= 9  # at least a 3x3 corner stays inside
    # a uniform centre over 16 rows gives an expected 6*6*(1 - 6/(4*16))^2 visible area (border clipping)
    expected = 36 * (1 - 6 / 64) ** 2
    assert abs(zeroed.mean().item() - expected) < 1.0


def test_resized_crop_params_follow_torchvision_ranges():
    cfg = AugmentConfig(resized_crop=True, resized_crop_scale=(0.2, 0.9), resized_crop_ratio=(0.5, 2.0))
    p = geometry_params(cfg, 5000, gen(4), "cpu")
    area = p["crop_w"] * p["crop_h"]
    ratio = p["crop_w"] / p["crop_h"]
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.9 + 1e-6
    assert ratio.min() >= 0.5 - 1e-6 and ratio.max() <= 2.0 + 1e-6
    assert (p["crop_w"] <= 1).all() and (p["crop_h"] <= 1).all()
    assert ((p["crop_cx"].abs() + p["crop_w"]) <= 1 + 1e-6).all()  # the box stays inside the image
    assert ((p["crop_cy"].abs() + p["crop_h"]) <= 1 + 1e-6).all()


def test_whole_image_crop_is_identity():
    cfg = AugmentConfig(resized_crop=True, resized_crop_scale=(1.0, 1.0), resized_crop_ratio=(1.0, 1.0))
    x = torch.rand(4, 3, 12, 12)
    assert torch.allclose(geometric(x, cfg, gen(5)), x, atol=1e-5)


def test_rotation_angles_and_exact_quarter_turn():
    cfg = AugmentConfig(rotation_deg=15.0)
    a = geometry_params(cfg, 10000, gen(6), "cpu")["angle_deg"]
    assert a.min() >= -15 and a.max() <= 15 and abs(a.mean()) < 0.5 and a.std().item() == pytest.approx(15 / math.sqrt(3), rel=0.05)
    # a 90 degree turn through the same theta builder must equal rot90 exactly (pixel centres map to pixel centres)
    x = torch.rand(2, 3, 9, 9)
    theta = sampling_grid_theta({"angle_deg": torch.full((2,), 90.0)}, 2, 9, 9, "cpu")
    out = F.grid_sample(x, F.affine_grid(theta, [2, 3, 9, 9], align_corners=False), align_corners=False)
    ref = torch.rot90(x, k=1, dims=(2, 3))
    ref_other = torch.rot90(x, k=-1, dims=(2, 3))
    assert torch.allclose(out, ref, atol=1e-5) or torch.allclose(out, ref_other, atol=1e-5)


def test_affine_shift_moves_content_by_the_drawn_amount():
    cfg = AugmentConfig(affine_translate=0.25)
    p = geometry_params(cfg, 4000, gen(7), "cpu")
    assert p["shift_x"].abs().max() <= 0.25 and p["shift_y"].abs().max() <= 0.25
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    theta = sampling_grid_theta({"shift_x": torch.tensor([0.25]), "shift_y": torch.tensor([0.0])}, 1, 16, 16, "cpu")
    out = F.grid_sample(x, F.affine_grid(theta, [1, 1, 16, 16], align_corners=False), align_corners=False)
    assert out[0, 0, 8, 12].item() == pytest.approx(1.0)  # a quarter of 16 px to the right


def test_affine_scale_zooms():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 6:10, 6:10] = 1.0  # a 4x4 square in the centre
    theta = sampling_grid_theta({"scale": torch.tensor([2.0])}, 1, 16, 16, "cpu")
    out = F.grid_sample(x, F.affine_grid(theta, [1, 1, 16, 16], align_corners=False), align_corners=False)
    assert out.sum().item() == pytest.approx(64.0, rel=0.05)  # area grows by scale^2


def test_colour_jitter_factors_stay_in_range():
    g = torch.full((3000, 3, 4, 4), 0.4)
    out = colour_jitter(g, AugmentConfig(brightness=0.5), gen(8))
    factor = out[:, 0, 0, 0] / 0.4
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5 and abs(factor.mean() - 1) < 0.02
    x = torch.rand(3000, 3, 8, 8) * 0.5 + 0.25
    out = colour_jitter(x, AugmentConfig(contrast=0.3), gen(9))
    ratio = out.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.7 - 1e-3 and ratio.max() <= 1.3 + 1e-3
    grey = torch.rand(50, 1, 8, 8).expand(50, 3, 8, 8).contiguous()
    assert torch.allclose(colour_jitter(grey, AugmentConfig(saturation=0.9, hue=0.5), gen(10)), grey, atol=1e-5)
    col = torch.rand(500, 3, 8, 8) * 0.3 + 0.35
    out = colour_jitter(col, AugmentConfig(hue=0.2), gen(11))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((out * luma).sum(1), (col * luma).sum(1), atol=1e-4)  # hue keeps brightness
    assert (out - col).abs().mean() > 0.01


def test_augmenter_is_seeded_and_normalises():
    x = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8)
    cfg = AugmentConfig(flip=0.5, translate_px=2, rotation_deg=10, brightness=0.2, cutout_px=4)
    aug = Augmenter(cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.is_contiguous(memory_format=torch.channels_last) and a.shape == (64, 3, 16, 16)
    plain = aug(x, None)  # evaluation: normalise only
    assert torch.allclose(plain, (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)


def test_flip_translate_tta_is_symmetric_and_exact_for_a_constant_image():
    from cifarlab.evaluate import tta_logits

    class Probe(torch.nn.Module):
        """Logits = the mean of the left half minus the mean of the right half (mirror-antisymmetric)."""
        def forward(self, x):
            w = x.shape[3] // 2
            d = x[:, :, :, :w].mean(dim=(1, 2, 3)) - x[:, :, :, w:].mean(dim=(1, 2, 3))
            return torch.stack([d, -d, x.mean(dim=(1, 2, 3))], 1)

    x = torch.rand(5, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    for tta in ("flip", "flip_translate"):
        out = tta_logits(Probe(), x, tta)
        assert torch.allclose(out[:, :2], torch.zeros(5, 2), atol=1e-6)  # mirror averaging cancels the asymmetry
    const = torch.full((2, 3, 8, 8), 0.7).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(tta_logits(Probe(), const, "flip_translate")[:, 2], torch.full((2,), 0.7))


# ------------------------------------------------------------------ properties over every valid config

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _range(lo, hi):
    return st.tuples(st.floats(lo, hi), st.floats(lo, hi)).map(sorted).map(tuple)


augment_configs = st.builds(
    AugmentConfig,
    flip=st.floats(0, 1), flip_mode=st.sampled_from(["random", "alternate"]), translate_px=st.integers(0, 40),
    translate_pad=st.sampled_from(["reflect", "zeros"]), cutout_px=st.integers(0, 40), resized_crop=st.booleans(),
    resized_crop_scale=_range(0.01, 1.0), resized_crop_ratio=_range(0.2, 5.0), rotation_deg=st.floats(0, 180),
    affine_translate=st.floats(0, 0.99), affine_scale=_range(0.1, 3.0), affine_shear_deg=st.floats(0, 89),
    brightness=st.floats(0, 3), contrast=st.floats(0, 3), saturation=st.floats(0, 3), hue=st.floats(0, 0.5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=augment_configs, n=st.integers(1, 5), h=st.integers(2, 20), w=st.integers(2, 20),
       c=st.sampled_from([1, 3]), seed=st.integers(0, 2**31), pixels=st.integers(0, 2**31))
def test_any_valid_config_keeps_shape_and_pixel_range(cfg, n, h, w, c, seed, pixels):
    """Whatever the settings (shifts and cutouts larger than the image included): same shape, finite values,
    pixels inside [0, 1] before normalisation, and the same generator seed gives the same batch."""
    x = torch.from_numpy(np.random.default_rng(pixels).integers(0, 256, (n, h, w, c), dtype=np.uint8))
    mean, std = (0.4,) * c, (0.2,) * c
    aug = Augmenter(cfg, mean, std)
    out = aug(x, torch.Generator().manual_seed(seed))
    again = aug(x, torch.Generator().manual_seed(seed))
    assert out.shape == (n, c, h, w) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    pixels01 = out * 0.2 + 0.4
    assert pixels01.min() >= -1e-5 and pixels01.max() <= 1 + 1e-5
    assert torch.equal(out, again)
