"""The fused CPU kernel for mix-conv layers (models/csrc/mixconv_fused.cpp): built on first use where a C++
compiler and ninja exist, equal to the report's K-convolution form (its bf16 variant: equal to it on
bf16-rounded operands), and picked by the automatic forms only where it runs and wins (fp32 on a CPU; bf16
autocast on CPUs without AMX)."""

from __future__ import annotations

import pytest
import torch

from cifarlab.models import mixconv_fused
from cifarlab.models.mixconv import MixConv2d, auto_form


@pytest.fixture
def kernel():
    """The kernel, built (once per session, in conftest's build folder) or the test skipped with the reason."""
    if not mixconv_fused.available():
        pytest.skip(f"fused mix-conv kernel not built here: {mixconv_fused.why_unavailable()}")


def _grads_match(layer: MixConv2d, x: torch.Tensor, form: str, rel: float) -> None:
    """`form` (fp32) against forward_reference in float64: output and the gradients of x and every parameter."""
    ref_layer = MixConv2d(layer.weight.shape[2], layer.weight.shape[1], layer.k, bias=layer.bias is not None,
                          temperature=layer.temperature, mixing=layer.mixing_fn).double()
    ref_layer.load_state_dict(layer.state_dict())
    xf = x.detach().clone().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out, ref = getattr(layer, f"forward_{form}")(xf), ref_layer.forward_reference(x64)
    assert out.dtype == torch.float32 and out.shape == ref.shape

    def close(got, want, what):
        err = (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        assert err < rel, f"{what}: relative error {err:.1e}"

    close(out, ref, "output")
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [xf, *layer.parameters()], g.float())
    want = torch.autograd.grad(ref, [x64, *ref_layer.parameters()], g)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for a, b, name in zip(got, want, names):
        close(a, b, f"grad of {name}")


@pytest.mark.parametrize("c_in, c_out, size, n, k, bias, layout", [
    (3, 32, 32, 2, 4, False, "channels_last"),   # a first layer: 3 channels, a 1,024-pixel map
    (16, 24, 8, 5, 3, True, "nchw"),             # odd batch (a group of 2 samples plus one), bias
    (64, 128, 4, 3, 4, False, "channels_last"),  # 4x4 maps, two output tiles of 64
    (40, 72, 7, 3, 5, True, "nchw"),             # K without a specialised loop; 72 = 64 + 8 channels; odd map
    (130, 16, 6, 1, 1, False, "channels_last"),  # K=1, batch 1, input channels past a 128 boundary
])
def test_fused_equals_the_k_convolution_form(c_in, c_out, size, n, k, bias, layout, kernel):
    torch.manual_seed(0)
    layer = MixConv2d(c_in, c_out, k, bias=bias, temperature=0.7)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)  # random weights everywhere, the router included: every mixing weight matters
    x = torch.randn(n, c_in, size, size)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _grads_match(layer, x, "fused", rel=1e-5)


@pytest.fixture
def bf16_kernel(kernel):
    if not mixconv_fused.has_bf16():
        pytest.skip("the fused kernel's bf16 variant needs AVX512-BF16 (this CPU or its compiler lacks it)")


def _bf16_reference(x, a, w, g):
    """The layer in float64 on the operands the bf16 variant multiplies: x and the output gradient rounded to
    bf16, each sample's kernel mixed from the bf16-rounded mixing weights and kernels (as autocast's library
    forms mix them) and rounded again; gradients pass the roundings unchanged."""
    import torch.nn.functional as F

    xr = x.bfloat16().double().requires_grad_()
    a64, w64 = a.double().requires_grad_(), w.double().requires_grad_()
    exact = torch.einsum("nk,koihw->noihw", a64, w64)
    mixed = torch.einsum("nk,koihw->noihw", a.bfloat16().double(), w.bfloat16().double()).bfloat16().double()
    kernels = exact + (mixed - exact).detach()
    out = torch.cat([F.conv2d(xr[i:i + 1], kernels[i], padding=1) for i in range(x.shape[0])])
    return (out, *torch.autograd.grad(out, (xr, a64, w64), g.bfloat16().double()))


@pytest.mark.parametrize("n, c_in, c_out, h, w, k", [
    (3, 5, 6, 4, 6, 4),     # 45 taps: a reduction padded to an even length; a 6-wide output tile (masked)
    (2, 3, 32, 32, 32, 4),  # a first layer on a 1,024-pixel map
    (5, 33, 70, 5, 4, 3),   # odd batch and C_in, 70 = 64 + 6 output channels, K without a specialised loop
    (2, 130, 64, 4, 4, 4),  # input channels past a 128 boundary, 4x4 maps
    (3, 40, 18, 6, 6, 5),   # K=5
])
def test_bf16_variant_equals_float64_on_its_rounded_operands(n, c_in, c_out, h, w, k, bf16_kernel):
    """Every product exact but for bf16 operand rounding: within 1e-4 of the float64 layer on the rounded
    operands, where the fp32 kernel (no rounding at all) is off by 2-4e-3."""
    torch.manual_seed(0)
    x, g = torch.randn(n, c_in, h, w), torch.randn(n, c_out, h, w)
    a, weight = torch.randn(n, k).softmax(1), torch.randn(k, c_out, c_in, 3, 3) * 0.2
    x_nhwc = x.permute(0, 2, 3, 1).bfloat16().contiguous()
    out = torch.ops.cifarlab_mixconv.forward_bf16(x_nhwc, a, weight).permute(0, 3, 1, 2)
    grad_x, grad_a, grad_w = torch.ops.cifarlab_mixconv.backward_bf16(
        x_nhwc, a, weight, g.permute(0, 2, 3, 1).bfloat16().contiguous(), g.bfloat16().contiguous())
    want = _bf16_reference(x, a, weight, g)
    for got, ref, what in zip((out, grad_x.permute(0, 3, 1, 2), grad_a, grad_w), want, ("out", "x", "a", "w")):
        assert got.dtype == torch.float32
        err = ((got.double() - ref).norm() / ref.norm()).item()
        assert err < 1e-4, f"{what}: relative error {err:.1e}"
    fp32 = torch.ops.cifarlab_mixconv.forward(x.permute(0, 2, 3, 1).contiguous(), a, weight).permute(0, 3, 1, 2)
    assert ((fp32.double() - want[0]).norm() / want[0].norm()).item() > 1e-3  # the test can tell


def test_bf16_steps_take_the_bf16_variant_where_it_fits(bf16_kernel, monkeypatch):
    seen = []
    apply = mixconv_fused.FusedMixConv.apply
    monkeypatch.setattr(mixconv_fused.FusedMixConv, "apply", lambda *args: seen.append(args[-1]) or apply(*args))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    even, odd = MixConv2d(8, 16, 4), MixConv2d(8, 15, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = even.forward_fused(x)
        odd.forward_fused(x)  # an odd C_out: the fp32 kernel
        even.forward_fused(torch.randn(2, 8, 5, 5))  # an odd H*W: the fp32 kernel
    out.sum().backward()
    # bf16 out, as an autocast conv gives; the gradient in x's dtype
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    even.forward_fused(x)  # an fp32 step
    monkeypatch.setenv("CIFARLAB_FUSED_MIXCONV_BF16", "0")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        even.forward_fused(x)
    assert seen == [True, False, False, False, False]


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_on_an_empty_batch(bf16, kernel):
    layer = MixConv2d(4, 8, 2)
    x = torch.randn(0, 4, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = layer.forward_fused(x)
    out.sum().backward()
    assert out.shape == (0, 8, 6, 6) and x.grad.shape == x.shape and layer.weight.grad.abs().sum() == 0


def test_fused_with_linear_mixing_and_large_maps(kernel):
    """Raw router outputs (negative weights) and a map large enough to tile the patches several times."""
    torch.manual_seed(1)
    layer = MixConv2d(8, 20, 4, mixing="linear")
    _grads_match(layer, torch.randn(3, 8, 40, 40), "fused", rel=1e-5)


def test_auto_uses_the_fused_kernel_on_cpu_maps_up_to_32x32(monkeypatch, kernel):
    from cifarlab.models import mixconv

    monkeypatch.setattr(mixconv, "cpu_has_amx", lambda: False)  # with AMX, bf16 steps keep the library forms
    layer = MixConv2d(8, 16, 4)
    picked = []
    for form in ("fused", "grouped", "wide", "bmm", "wide_matmul"):
        monkeypatch.setattr(layer, f"forward_{form}", lambda x, form=form: picked.append(form) or x)
    for size in (4, 8, 16, 32):
        layer(torch.randn(2, 8, size, size))
    layer(torch.randn(2, 8, 8, 8, dtype=torch.float64))  # the kernel is fp32: float64 keeps the library forms
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 8, 8, 8))  # bf16 steps use it too (its bf16 variant, or fp32 without AVX512-BF16)
        layer(torch.randn(2, 8, 32, 32))
    monkeypatch.setenv("CIFARLAB_FUSED_MIXCONV", "0")
    layer(torch.randn(2, 8, 8, 8))
    assert picked == ["fused", "fused", "fused", "fused", "bmm", "fused", "fused", "bmm"]
    assert auto_form(64, 64, "fp32", fused=True) == "fused" and auto_form(1024, 64, "fp32", fused=True) == "fused"
    assert auto_form(4096, 64, "fp32", fused=True) == "grouped"  # 64x64 maps: not measured
    assert auto_form(64, 64, "gpu", fused=True) == "wide"  # no CPU kernel on a GPU
    picked.clear()
    monkeypatch.setattr(mixconv, "cpu_has_amx", lambda: True)
    monkeypatch.delenv("CIFARLAB_FUSED_MIXCONV")
    layer(torch.randn(2, 8, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 8, 8, 8))
    assert picked == ["fused", "wide"]


def test_fused_model_trains_and_its_second_derivative_raises(kernel):
    from cifarlab.models import get_model

    torch.manual_seed(0)
    model = get_model("mixconv002", num_classes=10, in_channels=3, image_size=16, form="fused")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    layer = MixConv2d(4, 4, 2)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    (g,) = torch.autograd.grad(layer.forward_fused(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()


def test_fused_form_says_what_is_missing(monkeypatch):
    """Where the kernel cannot run, auto falls back and an explicit form=fused says why, in one line."""
    layer = MixConv2d(4, 8, 2)
    with pytest.raises(ValueError, match="3x3, stride-1"):
        MixConv2d(4, 8, 2, stride=2).forward_fused(torch.randn(1, 4, 8, 8))
    monkeypatch.setenv("CIFARLAB_FUSED_MIXCONV", "0")
    assert not mixconv_fused.available()
    with pytest.raises(RuntimeError, match="unavailable: CIFARLAB_FUSED_MIXCONV=0 turns it off; or use form=auto"):
        layer.forward_fused(torch.randn(1, 4, 8, 8))
    assert layer(torch.randn(1, 4, 8, 8)).shape == (1, 8, 8, 8)  # the library forms


def test_timed_form_times_the_fused_kernel_too(monkeypatch, tmp_path, kernel):
    from cifarlab.models import mixconv_timing

    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path))
    mixconv_timing.forget()
    layer = MixConv2d(16, 16, 4, form="timed")
    x = torch.randn(4, 16, 8, 8)
    layer(x).sum().backward()
    import json

    ((key, entry),) = json.loads(mixconv_timing.cache_file().read_text()).items()
    assert "fused" in entry["ms"]
    assert f"fused@{mixconv_fused.version()}" in key  # a rebuilt kernel is timed again
    mixconv_timing.forget()


def test_fused_layer_compiles_and_matches_eager(kernel):
    """torch.compile traces the kernel as one opaque op (shapes from its fake implementations), fp32 and bf16."""
    torch.manual_seed(0)
    layer = MixConv2d(16, 32, 4, form="fused")
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(layer)
    for bf16 in (False, True):
        results = []
        for f in (layer, compiled):
            layer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = f(x)
            out.float().square().sum().backward()
            results.append((out.detach().float(), layer.weight.grad.clone()))
        (out_e, grad_e), (out_c, grad_c) = results
        assert torch.allclose(out_c, out_e, rtol=1e-4, atol=1e-4)
        assert torch.allclose(grad_c, grad_e, rtol=1e-3, atol=1e-3)
