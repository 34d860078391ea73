"""Seed recipes: every setting quoted from its report really is in the report, every setting reaches the config,
the switches the reports need behave as the reports' PyTorch code did, and the table prints."""

import math
import re

import numpy as np
import pytest
import torch

from cifarlab.config import dotted_to_nested, from_dict
from cifarlab.errors import UserError
from cifarlab.recipes import RECIPES, SOURCES, provenance_table, resolve_config
from conftest import REPO

SEEDS = REPO.parent / "shared" / "seeds"
SEED_RECIPES = [name for name, r in RECIPES.items() if r.settings]

# keys whose cifarlab default is not what a plain PyTorch script does, and that change results:
# a seed recipe must set each explicitly (and so list where its value comes from)
MUST_BE_STATED = ["data.spec", "data.normalize", "model", "batch_size", "epochs", "label_smoothing", "optim.name",
                  "optim.weight_decay", "augment.flip", "augment.translate_px", "drop_last", "precision", "tta",
                  "ema_decay", "schedule.name"]


def _normalise(text: str) -> str:
    """Markdown emphasis, escapes and quotes off, whitespace folded, lower case: what a reader sees."""
    text = re.sub(r"[*\\`\"“”]", "", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def _report_text(prefix: str) -> str:
    files = sorted(SEEDS.glob(f"{prefix}_*.txt"))
    if not files:
        pytest.skip(f"seed reports not found at {SEEDS} (the checkout needs ../shared beside it)")
    return _normalise(files[0].read_text())


def get(cfg, dotted):
    if dotted.startswith("model_args."):
        return cfg.model_args[dotted.split(".", 1)[1]]
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_seed_recipes_are_all_there():
    assert SEED_RECIPES == ["seed000", "seed001", "seed002", "seed002-onenorm", "seed003", "seed003-steps",
                            "seed003-transfer", "seed004", "seed004-min"]


def test_seed002_onenorm_is_seed002_with_one_normalisation_and_says_why():
    from cifarlab.config import nested_to_dotted

    plain, one = (nested_to_dotted(resolve_config(n).to_dict()) for n in ("seed002", "seed002-onenorm"))
    assert {k for k in plain if plain[k] != one[k]} == {"recipe", "augment.normalize_first"}
    row = next(s for s in RECIPES["seed002-onenorm"].settings if s.key == "augment.normalize_first")
    assert row.source == "deviation" and "clamp" in row.why
    assert RECIPES["seed002-onenorm"].reported == RECIPES["seed002"].reported


def _lrs_of_seed004(name, test_losses):
    """The lr of each epoch under a seed004 recipe's scheduler, stepped once an epoch on the test loss as the
    trainer does."""
    from cifarlab.optim import build_scheduler

    cfg = resolve_config(name)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(cfg, opt, 469)
    lrs = []
    for loss in test_losses:
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(loss)
    return lrs


def test_seed004_cuts_the_lr_once_after_epoch_17_as_the_report_saw_whatever_the_loss_curve():
    # two curves: falling throughout, and seed 0's shape (lowest at epoch 11, then noisy and higher)
    falling = [0.45 - 0.004 * e for e in range(30)]
    seed0 = [0.44, 0.415, 0.369, 0.356, 0.355, 0.336, 0.335, 0.346, 0.324, 0.319, 0.311] + [0.33] * 19
    for curve in (falling, seed0):
        lrs = _lrs_of_seed004("seed004", curve)
        assert lrs[:17] == [1e-3] * 17 and all(lr == pytest.approx(1e-4) for lr in lrs[17:])
    # the report's words (mode min) wait for 16 epochs without a new lowest loss: after epoch 27 here
    lrs = _lrs_of_seed004("seed004-min", seed0)
    assert lrs[:27] == [1e-3] * 27 and lrs[27] == pytest.approx(1e-4)
    assert _lrs_of_seed004("seed004-min", falling) == [1e-3] * 30


def test_seed004_min_is_seed004_with_the_mode_the_report_names():
    from cifarlab.config import nested_to_dotted

    plain, literal = (nested_to_dotted(resolve_config(n).to_dict()) for n in ("seed004", "seed004-min"))
    assert {k for k in plain if plain[k] != literal[k]} == {"recipe", "schedule.plateau_mode"}
    row = next(s for s in RECIPES["seed004"].settings if s.key == "schedule.plateau_mode")
    assert row.source == "deviation" and "stops increasing" in row.why


@pytest.mark.parametrize("name", SEED_RECIPES)
def test_every_quoted_setting_is_in_its_report(name):
    recipe = RECIPES[name]
    text = _report_text(recipe.reported.report)
    for s in recipe.settings:
        assert s.source in SOURCES, (name, s.key)
        if s.source == "report":
            assert s.words, f"{name}: {s.key} claims the report but quotes nothing"
            assert _normalise(s.words) in text, f"{name}: {s.key}: {s.words!r} is not in report {recipe.reported.report}"
        else:
            assert s.why and not s.words, f"{name}: {s.key} ({s.source}) needs a reason and no quote"


@pytest.mark.parametrize("name", SEED_RECIPES)
def test_every_setting_reaches_the_config_and_the_critical_keys_are_stated(name):
    recipe = RECIPES[name]
    cfg = resolve_config(name, overrides=dotted_to_nested({"model_args.pretrained": "x.pth"}))
    for s in recipe.settings:
        want = s.value
        got = get(cfg, s.key)
        assert got == (tuple(want) if isinstance(want, list) else want), (name, s.key, got)
    stated = {s.key for s in recipe.settings}
    assert not [k for k in MUST_BE_STATED if k not in stated], name
    # no other key is set behind the table's back
    assert resolve_config(name, overrides=dotted_to_nested({"model_args.pretrained": "x.pth"})) == from_dict(
        {**dotted_to_nested({s.key: s.value for s in recipe.settings}), "recipe": name,
         "model_args": {**recipe.overrides.get("model_args", {}), "pretrained": "x.pth"}})


@pytest.mark.parametrize("name, metric, value, epoch", [
    ("seed000", "validation accuracy (final epoch)", "89.66", 40),
    ("seed001", "test accuracy (best epoch)", "85.22", 14),
    ("seed002", "validation accuracy (final epoch)", "92.38", 50),
    ("seed003", "validation accuracy (final epoch)", "65", 100),
    ("seed003-transfer", "test accuracy (final epoch)", "56.31", 30),
    ("seed004", "test accuracy (best epoch)", "90.05", 24),
])
def test_reported_results_are_the_reports_numbers(name, metric, value, epoch):
    rep = RECIPES[name].reported
    assert (rep.metric, rep.epoch) == (metric, epoch)
    assert math.isclose(rep.value * 100, float(value), abs_tol=1e-9)
    assert value + "%" in _report_text(rep.report).replace(" %", "%") or f"{value}%" in RECIPES[name].description


def test_recipes_table_names_each_setting_and_source(capsys):
    from cifarlab.cli import main

    assert main(["recipes", "seed000"]) == 0
    out = capsys.readouterr().out
    assert "report 000 states: validation accuracy (final epoch) 89.66% at epoch 40" in out
    for s in RECIPES["seed000"].settings:
        line = next(line for line in out.splitlines() if line.startswith(s.key + " "))
        assert s.source in line.split()
    assert re.search(r"label_smoothing\s+0.2\s+unstated\s+the value is not given", out)
    table = provenance_table("fast")
    assert "settings (not from a report)" in table and "optim.name" in table and "'muon'" in table


def test_transfer_recipe_refuses_to_train_from_scratch(tmp_path, capsys):
    from cifarlab.cli import main

    assert main(["train", "--recipe", "seed003-transfer", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs model_args.pretrained" in err and "from scratch" in err
    assert not (tmp_path / "r").exists()
    # --print-config still shows what it would run
    assert main(["train", "--recipe", "seed003-transfer", "--print-config"]) == 0


# ---------------------------------------------------------------- the switches the reports need

def test_label_smoothing_to_others_is_report_000s_loss():
    from cifarlab.trainer import training_loss

    torch.manual_seed(0)
    logits, y, s = torch.randn(6, 10), torch.tensor([0, 3, 9, 2, 2, 7]), 0.2
    target = torch.full((6, 10), s / 9)
    target[torch.arange(6), y] = 1 - s
    want = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(training_loss(logits, y, s, "others"), want)
    # and it differs from PyTorch's, which puts s/C on every class
    assert not torch.allclose(training_loss(logits, y, s, "all"), want)
    assert torch.allclose(training_loss(logits, y, s, "all"), torch.nn.functional.cross_entropy(logits, y,
                                                                                                label_smoothing=s))
    # the loss floor used to pick report 000's smoothing value: the entropy of the target distribution
    floor = lambda s: -(1 - s) * math.log(1 - s) - s * math.log(s / 9)  # noqa: E731
    assert round(floor(0.1), 3) == 0.545 and round(floor(0.2), 3) == 0.940


def test_init_layers_linear_leaves_convolutions_alone():
    from cifarlab.models.layers import apply_init

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.zeros(1, 3, 5, 5))
    conv_before, fc_bias_before = net[0].weight.clone(), net[2].bias.clone()
    apply_init(net, "kaiming_normal", "linear")
    assert torch.equal(net[0].weight, conv_before)
    assert torch.count_nonzero(net[2].bias) == 0 and torch.count_nonzero(fc_bias_before) > 0
    apply_init(net, "kaiming_normal", "conv")
    assert not torch.equal(net[0].weight, conv_before)


def test_seed001s_leaky_relu_has_pytorchs_default_slope():
    """Report 001 names no slope: the framework's default (0.01) is the faithful reading, not our 0.1 of old."""
    from cifarlab.models import get_model
    from cifarlab.recipes import resolve_config

    cfg = resolve_config("seed001", None, "cifar10", {})
    net = get_model(cfg.model, **{**cfg.model_args, "widths": (4,) * 11})
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {torch.nn.LeakyReLU().negative_slope} == {0.01}


def test_cosine_per_epoch_is_torch_cosine_annealing_stepped_each_epoch():
    from cifarlab.optim import lr_factor_fn

    cfg = resolve_config("seed000")
    spe, lr = 7, cfg.optim.lr
    factor = lr_factor_fn(cfg, spe)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.RMSprop([p], lr=lr)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-6)
    for epoch in range(cfg.epochs):
        lrs = {factor(epoch * spe + i) * lr for i in range(spe)}
        assert len(lrs) == 1, epoch  # held for the whole epoch
        assert math.isclose(lrs.pop(), opt.param_groups[0]["lr"], rel_tol=1e-9), epoch
        opt.step()  # (no gradient: nothing moves) keeps torch's step-order check quiet
        torch_sched.step()
    per_step = lr_factor_fn(from_dict({**RECIPES["seed000"].overrides, "schedule": {
        **RECIPES["seed000"].overrides["schedule"], "per_epoch": False}}), spe)
    assert per_step(1) != per_step(0)


def test_keeping_the_last_partial_batch():
    from cifarlab.augment import Augmenter
    from cifarlab.loader import DeviceLoader

    x, y = np.zeros((10, 4, 4, 1), np.uint8), np.arange(10) % 2
    keep = DeviceLoader(x, y, 4, torch.device("cpu"), Augmenter(None, (0.0,), (1.0,)), shuffle=True,
                        augment=False, drop_last=False)
    assert len(keep) == 3 and sum(len(b[1]) for b in keep.epoch(0)) == 10
    drop = DeviceLoader(x, y, 4, torch.device("cpu"), Augmenter(None, (0.0,), (1.0,)), shuffle=True,
                        augment=False, drop_last=True)
    assert len(drop) == 2


def test_normalize_first_is_report_002s_double_normalisation():
    from cifarlab.augment import Augmenter
    from cifarlab.config import AugmentConfig

    x = torch.tensor([[[[0], [64], [128], [255]]]], dtype=torch.uint8).expand(8, 4, 4, 1).contiguous()
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(flip=0.0, translate_px=0, brightness=1e-9, normalize_first=True)
    out = Augmenter(cfg, (0.5,), (0.5,), channels_last=False)(x, gen)
    # normalise -> jitter clamps to [0, 1] (the darker half becomes 0) -> normalise again
    v = torch.tensor([0, 64, 128, 255]) / 255
    want = ((v - 0.5) / 0.5).clamp(0, 1)
    want = (want - 0.5) / 0.5
    assert torch.allclose(out[0, 0, 0, :], want, atol=1e-5)
    plain = Augmenter(AugmentConfig(flip=0.0, translate_px=0), (0.5,), (0.5,), channels_last=False)(x, gen)
    assert torch.allclose(plain[0, 0, 0, :], (v - 0.5) / 0.5, atol=1e-6)
    # evaluation (no generator) normalises once, as the report's test transform does
    assert torch.allclose(Augmenter(cfg, (0.5,), (0.5,), channels_last=False)(x)[0, 0, 0, :], (v - 0.5) / 0.5,
                          atol=1e-6)


def test_unknown_requirement_free_recipe_trains_without_the_check():
    cfg = resolve_config("seed004")
    assert cfg.recipe == "seed004" and cfg.drop_last is False and cfg.optim.decay_bias is True
    assert cfg.model_args["norm_relu"] is False  # the report's table: no ReLU after a block's batch norm
    with pytest.raises(UserError, match="unknown recipe"):
        resolve_config("seed005")


def test_seed004_runs_end_to_end_on_genuine_idx_files(tmp_path, capsys):
    """Report 004's recipe on a small Fashion-MNIST written in the real IDX format, through the CLI; under
    --data-root, which wins over the system package's copy."""
    import json

    from cifarlab.cli import main
    from cifarlab.data.readers import write_idx
    from conftest import easy_images

    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = easy_images(60, size=28, classes=4)
    grey = x.mean(axis=3).astype(np.uint8)
    write_idx(raw / "train-images-idx3-ubyte.gz", grey)
    write_idx(raw / "train-labels-idx1-ubyte.gz", y)
    tx, ty = easy_images(10, size=28, classes=4, seed=3)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", tx.mean(axis=3).astype(np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", ty)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "seed004", "--data-root", str(tmp_path / "root"), "--out", str(run),
                 "epochs=10", "batch_size=32", "threads=1"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "patchmlp" and summary["num_train"] == 240 and summary["num_val"] == 40
    assert summary["val_source"] == "test split" and len(summary["classes"]) == 10
    assert summary["best_val_acc"] > 0.8  # 4 easy classes out of 10 labels
    # 240 images at batch 32 keep the last 16: 8 steps an epoch, as PyTorch's DataLoader would
    assert summary["recipe"] == "seed004" and summary["reported"]["value"] == 0.9005
    html = (run / "report.html").read_text()
    line = ("report 004: test accuracy (best epoch) 90.05% at epoch 24 on Fashion-MNIST test split; this run: "
            f"{summary['best_val_acc']:.2%} at epoch {summary['best_epoch']}")
    assert line in html
    assert line in capsys.readouterr().out  # the CLI ends with it too


def test_the_reported_line_shows_both_scores_of_a_recalibrated_run():
    from cifarlab.recipes import get_recipe, reported_line

    rep = get_recipe("seed001").reported.as_dict()  # a best-epoch result
    summary = {"reported": rep, "best_val_acc": 0.84, "best_epoch": 20, "final_val_acc": 0.83, "epochs": 25,
               "best_val_acc_running_bn": 0.7172, "best_epoch_running_bn": 19, "final_val_acc_running_bn": 0.5692}
    assert reported_line(summary).endswith("this run: 71.72% at epoch 19 (running BN statistics), "
                                           "84.00% at epoch 20 (precise BN)")
    final = {**summary, "reported": get_recipe("seed000").reported.as_dict()}  # a final-epoch result
    assert reported_line(final).endswith("this run: 56.92% at epoch 25 (running BN statistics), "
                                         "83.00% at epoch 25 (precise BN)")


def test_compare_shows_the_reports_number_beside_each_seed_run(tmp_path):
    import json

    import yaml

    from cifarlab.compare import compare_runs

    for name, recipe, best in [("a", "seed004", 0.91), ("b", "", 0.88)]:
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"recipe": recipe, "epochs": 30}))
        (d / "summary.json").write_text(json.dumps({"best_val_acc": best, "best_epoch": 20, "epochs": 30}))
    table, rows = compare_runs([tmp_path / "a", tmp_path / "b"])
    assert rows[0]["reported"] == 0.9005 and rows[0]["reported_metric"] == "test accuracy (best epoch), report 004"
    assert rows[1]["reported"] is None
    header = table.splitlines()[0].split()
    assert "reported" in header and table.splitlines()[2].split()[header.index("reported")] == "0.9005"
    assert "best_val_acc_running_bn" not in header
    # a bn_recalibrate run, unfinished: its best running-statistics score so far gets a column
    c = tmp_path / "c"
    c.mkdir()
    (c / "config.yaml").write_text(yaml.safe_dump({"recipe": "seed001", "epochs": 25, "bn_recalibrate": 5000}))
    (c / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": v, "val_acc_running_bn": r}) + "\n"
                                             for e, v, r in [(1, 0.5, 0.4), (2, 0.6, 0.35)]))
    _, rows = compare_runs([tmp_path / "a", c])
    assert rows[1]["best_val_acc"] == 0.6 and rows[1]["best_val_acc_running_bn"] == 0.4
    assert rows[0]["best_val_acc_running_bn"] is None


def test_seed003_ladder_is_the_reports_ten_steps_in_order_each_on_the_last():
    from cifarlab.models import get_model
    from cifarlab.recipes import ladder_configs

    recipe = RECIPES["seed003"]
    text = _report_text("003")
    assert len(recipe.ladder) == 10
    for rung in recipe.ladder:
        assert _normalise(rung.words) in text, rung.name
    steps = ladder_configs(recipe)
    # the report's numbers: 23 -> 31, 38, +4, 17, (gradually up), 48, 42 (reverted), +2 on 48, 59, 65
    assert [s[3] for s in steps] == [0.23, 0.31, 0.38, 0.42, 0.17, None, 0.48, 0.42, 0.50, 0.59, 0.65]
    for pct in ("23%", "31%", "38%", "4%", "17%", "48%", "42%", "2%", "59%", "65%"):
        assert pct in text
    configs = [resolve_config(recipe.ladder_base, overrides=dotted_to_nested(total)) for _, total, _, _ in steps]
    # cumulative: step 6 still has step 1's batch norm and step 4's doubled sub-blocks; step 8 undoes step 7 only
    assert configs[6].model_args["bn"] == "before_relu" and configs[6].model_args["double"] is True
    assert configs[7].model_args["fc_bn"] is True and configs[8].model_args["fc_bn"] is False
    assert configs[8].model_args["residual_scale"] == 0.1 and configs[10].epochs == 100
    assert configs[0].epochs == 30 and configs[9].augment.translate_px == 4 and configs[8].augment.flip == 0.0
    for cfg in configs:  # every step builds and runs on 32 px CIFAR images
        model = get_model(cfg.model, num_classes=100, in_channels=3, image_size=32, **cfg.model_args)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    starter = get_model("basenet_steps", num_classes=100, image_size=32)
    assert starter.fc1.in_features == 16 * 5 * 5  # the course's starter: 5x5 valid convs, 32 -> 28 -> 14 -> 10 -> 5


def test_ablate_ladder_replays_the_steps_through_the_cli(easy_folder, tmp_path, monkeypatch, capsys):
    import csv
    import dataclasses

    import yaml

    from cifarlab.cli import main

    short = dataclasses.replace(RECIPES["seed003"], ladder=RECIPES["seed003"].ladder[:3])
    monkeypatch.setitem(RECIPES, "seed003", short)
    out = tmp_path / "ladder"
    assert main(["ablate", "--recipe", "seed003", "--ladder", "--data", str(easy_folder / "train"), "--out",
                 str(out), "epochs=1", "batch_size=64", "threads=1", "--quiet"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["run"] for r in rows] == ["00-starter", "01-bn_after_conv", "02-five_subblocks_pool_2_4",
                                        "03-sixth_subblock"]
    assert [r["reported"] for r in rows] == ["0.23", "0.31", "0.38", "0.42"]
    assert all(r["status"] == "finished" and float(r["accuracy"]) >= 0.25 for r in rows)
    third = yaml.safe_load((out / "03-sixth_subblock" / "config.yaml").read_text())
    assert third["model"] == "basenet_steps" and third["model_args"]["bn"] == "before_relu"
    assert third["model_args"]["widths"] == [32, 32, 64, 64, 128, 128] and third["recipe"] == "seed003-steps"
    with pytest.raises(SystemExit):
        main(["ablate", "--recipe", "fast", "--ladder", "--bogus"])
    capsys.readouterr()
    assert main(["ablate", "--recipe", "fast", "--ladder", "--data", str(easy_folder)]) == 2
    assert "--ladder needs a recipe with a report's ablation steps: --recipe seed003" in capsys.readouterr().err


def test_python_api_stops_early_and_carries_the_reported_result(easy_folder, tmp_path):
    from cifarlab import train
    from cifarlab.trainer import StoppedEarly

    common = dict(recipe="seed004", data=str(easy_folder / "train"), quiet=True, threads=1, batch_size=64)
    with pytest.raises(StoppedEarly):
        train(out=tmp_path / "cut", stop_after_epochs=1, **common)
    s = train(out=tmp_path / "full", epochs=2, **common)
    assert s.recipe == "seed004" and s.reported["value"] == 0.9005 and s.epochs == 2


def test_each_reports_printed_points_include_the_number_it_is_judged_by():
    """The per-epoch points typed in from the reports hold their headline number at its epoch (a slip in
    copying them would put the report's curve somewhere it never was)."""
    from cifarlab.recipes import RECIPES

    for name, recipe in RECIPES.items():
        rep = recipe.reported
        if rep is None or not rep.points:
            continue
        epochs = [p[0] for p in rep.points]
        assert epochs == sorted(set(epochs)), name
        assert all(0 <= v <= 1 for p in rep.points for v in p[1:] if v is not None), name
        if rep.epoch is not None:
            assert dict((p[0], p[2]) for p in rep.points)[rep.epoch] == rep.value, name
    assert len(RECIPES["seed002"].reported.points) == 10 and len(RECIPES["seed003-transfer"].reported.points) == 30


def test_a_seed_runs_report_puts_the_reports_numbers_beside_its_own(tmp_path, monkeypatch):
    """report.html gets a table of the report's printed epochs beside the run's (a run not yet there shows
    "-"), and the accuracy panel and `compare --plot` get the report's points as markers."""
    import json

    import yaml
    from matplotlib.figure import Figure

    import cifarlab.compare as compare
    from cifarlab.plots import plot_reported_points
    from cifarlab.recipes import RECIPES
    from cifarlab.report import write_report

    run = tmp_path / "seed002-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": "seed002", "epochs": 50}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5 + e / 100,
                    "val_acc": 0.4 + e / 100}) + "\n" for e in range(1, 13)))
    page = write_report(run, None, None, [str(c) for c in range(10)]).read_text()
    table = page.split('id="beside-report">', 1)[1].split("</table>", 1)[0]
    rows = table.split("</tr>")[1:-1]
    assert len(rows) == 10  # epochs 5, 10, ..., 50
    assert rows[0] == "<tr><td>5</td><td>77.17%</td><td>55.00%</td><td>78.34%</td><td>45.00%</td>"
    assert rows[1].startswith("<tr><td>10</td><td>84.63%</td><td>60.00%</td><td>86.30%</td><td>50.00%</td>")
    assert rows[2] == "<tr><td>15</td><td>88.40%</td><td>-</td><td>88.56%</td><td>-</td>"  # not there yet
    assert (run / "curves.png").is_file()

    ax = Figure().add_subplot()
    plot_reported_points(ax, RECIPES["seed002"].reported)
    assert ax.get_legend_handles_labels()[1] == ["report 002: validation", "report 002: train"]
    ax = Figure().add_subplot()
    plot_reported_points(ax, RECIPES["seed004"].reported)  # a report that prints no training accuracy
    assert ax.get_legend_handles_labels()[1] == ["report 004: test"]
    assert ax.lines[0].get_xydata().tolist() == [[24, 0.9005], [30, 0.8988]]

    # compare --plot overlays the report only when one report is behind every run
    other = tmp_path / "onenorm"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump({"recipe": "seed002-onenorm", "epochs": 50}))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text(yaml.safe_dump({"recipe": "", "epochs": 50}))
    seen = []
    real = compare.plot_val_curves

    def recording(series, path, reported=None):
        seen.append(reported)
        return real(series, path, reported=reported)

    monkeypatch.setattr(compare, "plot_val_curves", recording)
    compare.compare_runs([run, other], plot_path=tmp_path / "a.png")
    compare.compare_runs([run, plain], plot_path=tmp_path / "b.png")
    assert seen == [RECIPES["seed002"].reported, None] and (tmp_path / "a.png").is_file()
