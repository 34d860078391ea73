"""Every registered model gets shape, backward and parameter-count tests for free (timm's trick)."""

import pytest
import torch

from cifarlab.errors import UserError
from cifarlab.models import get_model, list_models, register_model

# small widths keep the registry sweep fast; a model listed here must accept that option
SMALL = {"resnet18": {"width": 8}, "fastnet": {"widths": (8, 16, 16)}, "mixfastnet": {"widths": (8, 16, 16)},
         "mixconv000": {"widths": (8, 8, 16, 16, 16, 16, 16)}, "mixconv001": {"widths": (8,) * 11},
         "mixconv002": {"widths": (8, 8, 16, 16, 16, 16)},
         "basenet": {"widths": (8, 8, 16, 16), "depths": (1, 1, 1, 1), "pool_size": 4},
         "patchmlp": {"widths": (16, 32, 16, 16, 8, 8, 16, 8, 8)}}
KNOWN_PARAMS = {("resnet18", 10, 3): 11_173_962,  # the standard CIFAR ResNet-18 count
                ("fastnet", 10, 3): 1_972_792,
                ("patchmlp", 10, 1): 230_844,  # report 004's table, layer by layer
                ("basenet", 100, 3): 27_834_150}  # by hand: stem, 16 blocks, fc 512*16*16->50->100, BN  # by hand: stem 312 + groups 50,944 + 738,304 + 1,180,672 + head 2,560


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("classes, channels, size", [(10, 3, 32), (100, 3, 32), (10, 1, 28), (100, 1, 28)])
def test_forward_backward_shapes(name, classes, channels, size):
    torch.manual_seed(0)
    model = get_model(name, num_classes=classes, in_channels=channels, image_size=size, **SMALL.get(name, {}))
    x = torch.randn(3, channels, size, size)
    out = model(x)
    assert out.shape == (3, classes) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out.float(), torch.arange(3) % classes).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the loss reaches both ends of the network (zero-init residual branches may still be silent)
    assert grads[0].abs().sum() > 0 and grads[-1].abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts(name):
    for (n, classes, channels), count in KNOWN_PARAMS.items():
        if n == name:
            model = get_model(name, num_classes=classes, in_channels=channels)
            assert sum(p.numel() for p in model.parameters()) == count
    small10 = get_model(name, num_classes=10, **SMALL.get(name, {}))
    small100 = get_model(name, num_classes=100, **SMALL.get(name, {}))
    head = [m for m in small10.modules() if isinstance(m, torch.nn.Linear)][-1]
    extra = sum(p.numel() for p in small100.parameters()) - sum(p.numel() for p in small10.parameters())
    logit_norm = [m for m in small10.modules() if isinstance(m, torch.nn.BatchNorm1d) and m.num_features == 10]
    # only the classifier (and basenet's batch norm on the logits) grows with the class count
    assert extra == 90 * (head.in_features + (head.bias is not None)) + 2 * 90 * bool(logit_norm)


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes=10, in_channels=3: None)
    with pytest.raises(UserError, match="unknown model 'resnet19'; registered models: .*resnet18"):
        get_model("resnet19")
    with pytest.raises(UserError, match="model 'resnet18' has no option 'widht'; allowed model_args: width"):
        get_model("resnet18", widht=3)


def test_fastnet_whitening_init_whitens_patches():
    torch.manual_seed(0)
    model = get_model("fastnet", widths=(8, 16, 16))
    # correlated colour channels: whitening must decorrelate the 2x2x3 patches
    base = torch.randn(256, 1, 16, 16)
    images = torch.cat([base, base * 0.9 + 0.1 * torch.randn_like(base), base * 0.5], 1)
    model.data_init(images)
    out = model.whiten(images)[:, :12] - model.whiten.bias[:12, None, None]  # first half: the whitening filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / len(flat)
    # the 4 strong components (eigenvalues >> eps) come out with unit variance, all 8 real ones uncorrelated
    assert torch.allclose(torch.diag(cov)[:4], torch.ones(4), atol=0.01)
    top = cov[:8, :8]
    assert (top - torch.diag(torch.diag(top))).abs().max() < 0.01


@pytest.mark.parametrize("form", ["grouped", "wide", "wide_matmul", "bmm", "bmm chunk 3", "bmm chunk 1"])
@pytest.mark.parametrize("stride, bias", [(1, True), (2, False)])
def test_mixconv_grouped_equals_k_convolutions(stride, bias, form):
    """Every fast path (per-sample kernels in one grouped conv; one wide conv then mixing; per-sample kernels as
    matmuls, built a chunk of samples at a time, 3 not dividing the batch) must match the report's K-conv form in
    outputs and gradients (float64)."""
    from cifarlab.models.mixconv import MixConv2d

    torch.manual_seed(0)
    layer = MixConv2d(5, 7, k=3, stride=stride, temperature=0.7, bias=bias).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()  # random weights everywhere, the router included
    x = torch.randn(4, 5, 9, 9, dtype=torch.float64, requires_grad=True)
    name, _, chunk = form.partition(" chunk ")
    run = getattr(layer, f"forward_{name}")
    fast, ref = (run(x, chunk=int(chunk)) if chunk else run(x)), layer.forward_reference(x)
    assert torch.allclose(fast, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, [x, *layer.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x, *layer.parameters()], g)
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
    assert layer.mixing(x).sum(1).allclose(torch.ones(4, dtype=torch.float64))
    # forward picks by map size (output pixels, hence stride 1 here); float64 never runs the fp32 fused kernel
    layer.stride = 1
    tiny, small, large = (torch.randn(2, 5, s, s, dtype=torch.float64) for s in (4, 8, 12))
    assert torch.equal(layer(tiny), layer.forward_wide(tiny))  # 3 x 7 filters: too few for the matmul form
    wide = MixConv2d(5, 400, k=4).double()
    tiny = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    assert torch.equal(wide(tiny), wide.forward_wide_matmul(tiny))
    assert torch.equal(layer(small), layer.forward_bmm(small))
    assert torch.equal(layer(large), layer.forward_grouped(large))


def test_mixconv_linear_mixing_is_the_raw_router_output_in_every_form():
    """mixing="linear": the K weights straight from the linear layer (no softmax), as the reports describe
    them; every form still equals the K-convolution form, outputs and gradients (float64)."""
    from cifarlab.models.mixconv import MixConv2d

    torch.manual_seed(1)
    layer = MixConv2d(5, 7, k=3, mixing="linear").double()
    x = torch.randn(4, 5, 9, 9, dtype=torch.float64, requires_grad=True)
    a = layer.mixing(x)
    assert torch.equal(a, layer.router(x.mean(dim=(2, 3))))
    assert not a.sum(1).allclose(torch.ones(4, dtype=torch.float64)) and (a < 0).any()
    ref = layer.forward_reference(x)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, *layer.parameters()], g)
    for form in ("grouped", "wide", "wide_matmul", "bmm"):
        out = getattr(layer, f"forward_{form}")(x)
        assert torch.allclose(out, ref, atol=1e-10, rtol=1e-10), form
        for got, want in zip(torch.autograd.grad(out, [x, *layer.parameters()], g), grads_ref):
            assert torch.allclose(got, want, atol=1e-9, rtol=1e-9), form
    with pytest.raises(ValueError, match="mixing must be softmax or linear"):
        MixConv2d(5, 7, mixing="sigmoid")


def test_mixconv_auto_form_follows_the_rules_measured_for_each_device_and_dtype():
    from cifarlab.models.mixconv import auto_form
    # (pixels, K*C_out) -> form, per rule set: 4x4, 8x8, 16x16, 32x32 maps
    assert [auto_form(p, 1024, "fp32") for p in (16, 64, 256, 1024)] == ["wide", "bmm", "grouped", "grouped"]
    assert [auto_form(p, 1024, "bf16") for p in (16, 64, 256, 1024)] == ["wide", "wide", "wide", "grouped"]
    assert [auto_form(p, 1024, "gpu") for p in (16, 64, 256, 1024)] == ["wide", "wide", "grouped", "grouped"]
    assert auto_form(16, 2048, "fp32") == auto_form(16, 2048, "bf16") == "wide_matmul"
    assert auto_form(16, 2048, "gpu") == "wide"
    with pytest.raises(ValueError, match="unknown mix-conv rules"):
        auto_form(16, 64, "tpu")


def test_mixconv_picks_its_bf16_rules_under_cpu_autocast(monkeypatch):
    from cifarlab.models.mixconv import MixConv2d
    monkeypatch.setenv("CIFARLAB_FUSED_MIXCONV", "0")  # the library forms' rules (the fused kernel: its own tests)
    layer = MixConv2d(4, 8, k=3)
    x = torch.randn(2, 4, 8, 8)
    picked = []
    for form in ("wide", "bmm", "grouped", "wide_matmul"):
        monkeypatch.setattr(layer, f"forward_{form}", lambda x, form=form: picked.append(form) or x)
    layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    layer(x.bfloat16())
    monkeypatch.setattr(MixConv2d, "CPU_RULES", "gpu")
    layer(torch.randn(2, 4, 16, 16))
    assert picked == ["bmm", "wide", "wide", "grouped"]


@pytest.mark.parametrize("form", ["grouped", "wide", "wide_matmul", "bmm", "reference"])
def test_every_form_a_net_can_be_told_to_use_gives_the_same_net(form):
    torch.manual_seed(0)
    auto = get_model("mixconv001", widths=(4,) * 11).double()
    forced = get_model("mixconv001", widths=(4,) * 11, form=form).double()
    forced.load_state_dict(auto.state_dict())
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)  # maps of 32, 16, 8 and 4 pixels: every band of "auto"
    assert torch.allclose(forced(x), auto(x), atol=1e-10)


@pytest.mark.parametrize("form", ["grouped", "wide", "wide_matmul", "bmm", "fused", "reference"])
def test_every_form_hands_on_the_layout_it_was_given(form):
    """A layer's form must not change the layout the next layers see: form=timed chooses per layer."""
    from cifarlab.models import mixconv_fused
    from cifarlab.models.mixconv import MixConv2d

    if form == "fused" and not mixconv_fused.available():
        pytest.skip(mixconv_fused.why_unavailable())
    layer = MixConv2d(4, 6, k=3, form=form)
    x = torch.randn(3, 4, 8, 8)
    assert layer(x).is_contiguous()
    out = layer(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_an_unknown_form_is_one_line_naming_the_choices():
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="form must be one of auto, timed, grouped, wide, wide_matmul, bmm, fused, reference"):
        get_model("mixconv002", form="fastest")


def test_basenet_switches():
    off = get_model("basenet", widths=(8, 8, 8, 8), depths=(1, 1, 1, 1), batch_norm=False, residual=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in off.modules())
    on = get_model("basenet", widths=(8, 16, 16, 16), depths=(1, 1, 1, 1), residual_scale=0.0)
    on.eval()
    x = torch.randn(2, 3, 32, 32)
    block = on.blocks[0]  # residual_scale 0: the block is exactly its (identity) shortcut
    assert torch.equal(block(x[:, :0].new_zeros(2, 8, 32, 32) + 1.5), torch.full((2, 8, 32, 32), 1.5))
    assert isinstance(on.blocks[1].project, torch.nn.Conv2d)  # 8 -> 16 channels needs a projection


def test_patchmlp_follows_report_004s_table_when_asked():
    """The table has no ReLU after a block's batch norm: with norm_relu=False the classifier sees negative
    features; by default (the ReLU kept for earlier checkpoints) it never does."""
    seen = {}

    def record(name):
        return lambda module, inputs, output: seen.__setitem__(name, inputs[0].detach())

    x = torch.randn(16, 1, 28, 28)
    for norm_relu in (True, False):
        net = get_model("patchmlp", in_channels=1, norm_relu=norm_relu).eval()
        net.classifier.register_forward_hook(record(norm_relu))
        net(x)
    assert seen[True].min() >= 0 and seen[False].min() < 0
    hidden = get_model("patchmlp", in_channels=1, dropout_at="hidden", dropouts=(0.5, 0.5))
    assert hidden.block1_a.drop.p == 0.5 and hidden.block2_b.drop.p == 0.5 and hidden.drop1.p == 0.0
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="dropout_at must be block or hidden"):
        get_model("patchmlp", dropout_at="everywhere")


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_cpu_dropout_drops_independently_at_rate_p_and_keeps_the_expectation(p):
    """The fast CPU dropout's mask: each element dropped with probability p (to 1/65536), neighbours (which
    share a 64-bit draw) independently of each other, the kept values scaled so the mean stays x's."""
    from cifarlab.models.layers import Dropout

    n = 1 << 20
    x = torch.ones(n, requires_grad=True)
    torch.manual_seed(0)
    out = Dropout(p)(x)
    dropped = out == 0
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    for lane in range(4):  # each 16-bit quarter of a draw on its own
        assert abs(dropped[lane::4].float().mean().item() - p) < 5 * 2 * sigma
    both = (dropped[:-1] & dropped[1:]).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5
    assert abs(out.mean().item() - 1) < 5 * (p / (1 - p) / n) ** 0.5
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)), rtol=1e-4)
    out.backward(torch.arange(n, dtype=torch.float32))
    assert torch.equal(x.grad == 0, dropped | (torch.arange(n) == 0))  # the gradient takes the same mask
    torch.manual_seed(0)
    assert torch.equal(Dropout(p)(x.detach()), out.detach())  # seeded like the rest of a run


def test_cpu_dropout_is_nn_dropout_in_eval_at_the_extremes_and_in_bf16():
    from cifarlab.models.layers import Dropout

    x = torch.randn(3, 7, 5)  # 105 values: not a whole number of 64-bit draws
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    out = Dropout(0.5)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    kept = out != 0
    assert torch.allclose(out[kept].float(), 2 * x.bfloat16()[kept].float())
    assert isinstance(Dropout(0.1), torch.nn.Dropout) and Dropout(0.1).state_dict() == {}


def test_transfer_loads_local_weights_safely(tmp_path):
    import pickle

    import torchvision

    from cifarlab.errors import UserError

    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    m = get_model("transfer_resnet18", num_classes=7, pretrained=str(path), finetune="head",
                  input_policy="upsample", upsample_size=64)
    assert torch.equal(m.net.conv1.weight, src.conv1.weight) and torch.equal(m.net.layer4[1].conv2.weight,
                                                                              src.layer4[1].conv2.weight)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["net.fc.weight", "net.fc.bias"]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    grey = get_model("transfer_resnet18", in_channels=1, pretrained=str(path), input_policy="upsample")
    assert torch.allclose(grey.net.conv1.weight[:, 0], src.conv1.weight.mean(1))
    with pytest.raises(UserError, match="pretrained weights file not found"):
        get_model("transfer_resnet18", pretrained=str(tmp_path / "missing.pth"))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    with pytest.raises(UserError, match="cannot load .* safely"):
        get_model("transfer_resnet18", pretrained=str(bad))


def test_named_inits():
    from cifarlab.models.layers import apply_init

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.Linear(300, 10))
    apply_init(m, "kaiming_normal")
    assert m[0].weight.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05) and m[0].bias.abs().sum() == 0
    apply_init(m, "xavier_uniform")
    assert m[0].weight.abs().max().item() <= (6 / 700) ** 0.5
    mix = get_model("mixconv000", widths=(8,) * 7, init="xavier_normal")
    w = mix.blocks[1].conv.weight[2]
    fan_in, fan_out = 8 * 9, 8 * 9
    assert w.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.15)


@pytest.mark.parametrize("name", list_models())
def test_channels_last_bf16_forward_matches_fp32(name):
    """What training does by default: NHWC weights and inputs under bf16 autocast."""
    from cifarlab.runtime import to_channels_last

    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_channels=3, image_size=32, **SMALL.get(name, {})).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    to_channels_last(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape and torch.allclose(out.float(), ref, atol=0.1 * ref.abs().max().item() + 0.05)


def test_fastnet_stem_bias_trains_for_its_epochs_then_freezes(easy_folder, tmp_path):
    net = get_model("fastnet", whiten_bias_epochs=2)
    assert net.start_epoch(0) is False and net.whiten.bias.requires_grad
    assert net.start_epoch(2) is True and not net.whiten.bias.requires_grad
    assert net.start_epoch(3) is False
    assert net.start_epoch(1) is True and net.whiten.bias.requires_grad  # a run resumed into an earlier epoch
    with pytest.raises(UserError, match="whiten_bias_epochs must be >= 0"):
        get_model("fastnet", whiten_bias_epochs=-1)

    from cifarlab.api import train_run
    from cifarlab.progress import Reporter
    from cifarlab.recipes import resolve_config

    out = tmp_path / "run"
    cfg = resolve_config(None, None, str(easy_folder / "train"), {
        "model": "fastnet", "model_args": {"widths": [8, 16, 16], "whiten_bias_epochs": 1}, "epochs": 3,
        "batch_size": 32, "threads": 1, "optim": {"lr": 0.05}})
    weights = []
    train_run(cfg, out, reporter=Reporter(quiet=True), on_epoch=lambda row: weights.append(
        torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]))
    bias = [w["whiten.bias"] for w in weights]
    assert bias[0].abs().sum() > 0  # it trained in epoch 1 (it starts at zero) ...
    assert torch.equal(bias[0], bias[1]) and torch.equal(bias[1], bias[2])  # ... and not after
    assert not torch.equal(weights[1]["head.weight"], weights[2]["head.weight"])  # the rest still learns


def test_timed_form_measures_each_layer_shape_once_keeps_the_fastest_and_remembers_it(monkeypatch, capsys):
    """form=timed times the exact forms on the first batch of a layer shape (forward + backward into a copy,
    never into the real parameters), uses the fastest, and keeps the choice for later processes."""
    import json
    import time

    from cifarlab.models import mixconv_timing
    from cifarlab.models.mixconv import MixConv2d

    mixconv_timing.forget()
    calls = []
    for form in ("grouped", "wide", "wide_matmul", "bmm"):  # every form but bmm made slow
        original = getattr(MixConv2d, f"forward_{form}")

        def spy(self, x, original=original, form=form):
            calls.append(form)
            if form != "bmm":
                time.sleep(0.03)
            return original(self, x)

        monkeypatch.setattr(MixConv2d, f"forward_{form}", spy)
    torch.manual_seed(0)
    layer = MixConv2d(4, 6, k=3, form="timed").double()
    x = torch.randn(5, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert calls[-1] == "bmm" and set(calls[:-1]) == {"grouped", "wide", "wide_matmul", "bmm"}
    assert all(p.grad is None for p in layer.parameters())  # the timing ran backward on a copy
    assert torch.allclose(out, layer.forward_reference(x), atol=1e-12)
    assert "form=timed" in capsys.readouterr().err

    calls.clear()
    layer(x)
    assert calls == ["bmm"]  # same shape: no second timing
    with torch.no_grad():
        layer(x)  # inference is timed on its own (forward only)
    assert len(calls) > 1
    saved = json.loads(mixconv_timing.cache_file().read_text())
    assert len(saved) == 2 and all(e["form"] == "bmm" and set(e["ms"]) >= {"bmm", "wide"} for e in saved.values())
    assert any("fwd+bwd" in k and "4->6 K=3" in k and "8x8" in k for k in saved)
    # AVX2-only and AVX-512 CPUs can share a name ("AMD EPYC") and not their fastest forms
    assert all(f"({torch.backends.cpu.get_cpu_capability()}" in k for k in saved)

    mixconv_timing.forget()  # a new process: the file decides, nothing is timed
    calls.clear()
    layer(x)
    assert calls == ["bmm"]

    mixconv_timing.forget()
    mixconv_timing.cache_file().write_text("{not json")  # a damaged file is timed again and rewritten
    calls.clear()
    layer(x)
    assert len(calls) > 4 and json.loads(mixconv_timing.cache_file().read_text())
    mixconv_timing.forget()


def test_a_timed_net_trains_exactly_like_the_reference_form():
    from cifarlab.models import mixconv_timing

    mixconv_timing.forget()
    torch.manual_seed(0)
    timed = get_model("mixconv002", widths=(4, 4, 6, 6), form="timed").double()
    reference = get_model("mixconv002", widths=(4, 4, 6, 6), form="reference").double()
    reference.load_state_dict(timed.state_dict())
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    for net in (timed, reference):
        net(x).square().sum().backward()
    for (name, p), q in zip(timed.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-9), name
    mixconv_timing.forget()
