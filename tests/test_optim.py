import pytest
import torch

from cifarlab.config import parse_overrides
from cifarlab.optim import build_optimizer, build_scheduler, effective_lr, lr_factor_fn
from cifarlab.recipes import resolve_config


def cfg(*items):
    return resolve_config(overrides=parse_overrides(list(items)))


def lrs(c, steps_per_epoch, n):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(c, model)
    sched = build_scheduler(c, opt, steps_per_epoch)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_onecycle_warms_up_then_decays_linearly():
    seq = lrs(cfg("epochs=4", "optim.lr=0.4", "schedule.name=onecycle", "schedule.warmup_epochs=1",
                  "schedule.final_lr_fraction=0.1"), 10, 40)
    assert seq[0] == pytest.approx(0.04) and seq[9] == pytest.approx(0.4)
    assert seq[10] == pytest.approx(0.4)
    assert seq[39] == pytest.approx(0.4 * (1 + (0.1 - 1) * 29 / 30))
    assert all(a >= b for a, b in zip(seq[10:], seq[11:]))


def test_cosine_matches_closed_form_and_respects_t_max():
    seq = lrs(cfg("epochs=40", "optim.lr=1e-3", "schedule.name=cosine", "schedule.warmup_epochs=0",
                  "schedule.t_max_epochs=100", "schedule.eta_min=1e-6"), 1, 40)
    import math
    for e in (0, 10, 39):
        assert seq[e] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * e / 100)))
    assert seq[-1] > 5e-4  # T_max 100 with 40 epochs: still high at the end, as in report 000


def test_schedules_move_every_optimizer_step_unless_held_per_epoch():
    import math

    common = ["epochs=4", "optim.lr=1e-3", "schedule.name=cosine", "schedule.warmup_epochs=0"]
    per_step = lrs(cfg(*common), 5, 20)
    # a new lr every step: the closed form at fractional epochs (step / steps_per_epoch)
    assert per_step[1] < per_step[0] and per_step[7] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 20)))
    per_epoch = lrs(cfg(*common, "schedule.per_epoch=true"), 5, 20)
    assert [len(set(per_epoch[e * 5:(e + 1) * 5])) for e in range(4)] == [1, 1, 1, 1]
    assert per_epoch[10] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))  # epoch 2's value
    onecycle = lrs(cfg("epochs=2", "optim.lr=0.4", "schedule.name=onecycle", "schedule.warmup_epochs=0",
                       "schedule.per_epoch=true"), 3, 6)
    assert onecycle == [pytest.approx(0.4)] * 3 + [pytest.approx(0.2)] * 3


def test_step_schedule():
    f = lr_factor_fn(cfg("epochs=9", "schedule.name=step", "schedule.step_epochs=3", "schedule.gamma=0.5"), 5)
    assert [f(s) for s in (0, 14, 15, 30, 44)] == [1, 1, 0.5, 0.25, 0.25]


def test_plateau_cuts_after_patience():
    c = cfg("schedule.name=plateau", "schedule.plateau_patience=2", "schedule.plateau_factor=0.5", "optim.lr=0.1")
    opt = build_optimizer(c, torch.nn.Linear(2, 2))
    sched = build_scheduler(c, opt, 10)
    for loss in [1.0, 0.9, 0.9, 0.9]:
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # two bad epochs: within patience
    sched.step(0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the third one cuts


def test_batch_aware_lr_and_optimizer_settings():
    c = cfg("optim.lr=0.1", "optim.lr_reference_batch=256", "batch_size=128", "accumulate_steps=4")
    assert effective_lr(c) == pytest.approx(0.2)
    opt = build_optimizer(cfg("optim.name=rmsprop", "optim.lr=1e-3", "optim.alpha=0.99", "optim.momentum=0.9",
                              "optim.weight_decay=0"), torch.nn.Linear(2, 2))
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.RMSprop) and g["alpha"] == 0.99 and g["momentum"] == 0.9 and g["eps"] == 1e-8
    adam = build_optimizer(cfg("optim.name=adam", "optim.weight_decay=5e-4"), torch.nn.Linear(2, 2))
    assert [g["weight_decay"] for g in adam.param_groups] == [5e-4, 0.0]  # no decay on the bias
    for name, cls in [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("asgd", torch.optim.ASGD)]:
        assert isinstance(build_optimizer(cfg(f"optim.name={name}"), torch.nn.Linear(2, 2)), cls)
    assert build_optimizer(cfg(), torch.nn.Linear(2, 2)).param_groups[0]["nesterov"] is True


def test_warmup_is_capped_at_half_a_short_run():
    f = lr_factor_fn(cfg("epochs=1", "schedule.name=onecycle", "schedule.warmup_epochs=1"), 100)
    assert f(49) == pytest.approx(1.0) and f(99) < 0.05


def test_bias_lr_scale_and_decay_keep_the_lr_wd_product():
    c = cfg("optim.lr=0.5", "optim.weight_decay=0.01", "optim.bias_lr_scale=64", "optim.decay_bias=true")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    weights, biases = build_optimizer(c, model).param_groups
    assert weights["lr"] == 0.5 and biases["lr"] == 32.0 and len(biases["params"]) == 3
    assert weights["lr"] * weights["weight_decay"] == pytest.approx(biases["lr"] * biases["weight_decay"])


def test_warmup_start_fraction():
    f = lr_factor_fn(cfg("epochs=10", "schedule.name=onecycle", "schedule.warmup_epochs=1", "schedule.warmup_start=0.2"), 10)
    assert f(0) == pytest.approx(0.2 + 0.8 * 0.1) and f(9) == pytest.approx(1.0)


def test_muon_orthogonalises_filter_updates_and_keeps_unit_rms():
    from cifarlab.optim import MuonSGD, _newton_schulz

    torch.manual_seed(0)
    g = torch.randn(16, 72)
    o = _newton_schulz(g, steps=5).float()
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.5  # singular values pushed towards 1 (roughly orthogonal)
    conv = torch.nn.Conv2d(8, 16, 3)
    c = cfg("optim.name=muon", "optim.muon_lr=0.1", "optim.lr=0.05", "optim.weight_decay=0")
    opt = build_optimizer(c, conv)
    assert isinstance(opt, MuonSGD)
    muon, rest = opt.param_groups
    assert muon["muon"] and muon["params"][0] is conv.weight and rest["params"][0] is conv.bias
    conv(torch.randn(4, 8, 10, 10)).square().mean().backward()
    before = conv.bias.detach().clone()
    opt.step()
    assert conv.weight.norm().item() == pytest.approx(16 ** 0.5, rel=0.2)  # normalised before the step
    assert not torch.equal(conv.bias, before)  # the SGD part moved too


def test_muon_treats_each_mixconv_expert_as_its_own_filter_bank_and_gives_routers_their_lr():
    """A 5-D mix-conv weight (K experts) gets exactly the update K separate 4-D conv weights would get."""
    from cifarlab.models.mixconv import MixConv2d

    torch.manual_seed(0)
    mix = MixConv2d(4, 6, k=3, bias=False)
    experts = torch.nn.ParameterList([torch.nn.Parameter(mix.weight[i].detach().clone()) for i in range(3)])
    c = cfg("optim.name=muon", "optim.muon_lr=0.1", "optim.lr=500", "optim.router_lr=0.02", "optim.weight_decay=0")
    opt = build_optimizer(c, mix)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert groups[id(mix.weight)]["muon"]
    assert groups[id(mix.router.weight)]["lr"] == 0.02 and not groups[id(mix.router.weight)]["muon"]
    mix(torch.randn(5, 4, 8, 8)).square().mean().backward()
    for e, i in zip(experts, range(3)):
        e.grad = mix.weight.grad[i].clone()
    opt.step()
    ref = type(opt)([dict(params=list(experts), lr=0.1, momentum=c.optim.muon_momentum, weight_decay=0.0, muon=True)])
    ref.step()
    for i in range(3):
        torch.testing.assert_close(mix.weight[i], experts[i])
