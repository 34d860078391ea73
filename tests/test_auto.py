"""The automatic defaults: `cifarlab train --data X` with nothing else chooses from the data, says why,
and steps aside for a recipe, a config file or model=."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import easy_images, write_folder

from cifarlab.auto import DataProfile, choose, profile_data
from cifarlab.cli import main
from cifarlab.config import DataConfig, from_dict, nested_to_dotted
from cifarlab.recipes import get_recipe, resolve_config


def profile(n, h=32, w=32, c=3, spec="folder", classes=10, has_test=True):
    return DataProfile(spec, n, classes, h, w, c, has_test)


def test_profile_reads_counts_sizes_and_colour_from_headers(tmp_path):
    x, y = easy_images(10, size=24, classes=3)
    write_folder(tmp_path / "flat", x, y)
    p = profile_data(DataConfig(spec=str(tmp_path / "flat")))
    # no test folder: the run holds out 10% (ceil of 3 of 30), so 27 images train
    assert (p.num_train, p.num_classes, p.height, p.width, p.channels, p.has_test_split) == (27, 3, 24, 24, 3, False)
    write_folder(tmp_path / "split" / "train", x, y)
    write_folder(tmp_path / "split" / "test", x[:6], y[:6])
    p = profile_data(DataConfig(spec=str(tmp_path / "split"), image_size=48, channels=1))
    assert (p.num_train, p.height, p.channels, p.has_test_split) == (30, 48, 1, True)
    grey = (x.mean(-1, keepdims=True)).astype(np.uint8)
    write_folder(tmp_path / "grey", grey, y)
    assert profile_data(DataConfig(spec=str(tmp_path / "grey"))).channels == 1
    assert profile_data(DataConfig(spec="fashion-mnist")).num_train == 60_000  # named sets need no files


def test_large_cifar_and_fashion_sized_data_get_the_speed_run_recipes_unchanged():
    assert (choose(profile(45_000)).recipe, choose(profile(45_000)).overrides) == ("fast", {})
    grey = choose(profile(60_000, 28, 28, 1, spec="fashion-mnist"))
    assert (grey.recipe, grey.overrides) == ("fast-fmnist", {})
    digits = choose(profile(60_000, 28, 28, 1, spec="mnist"))
    assert digits.recipe == "fast-fmnist" and digits.overrides["augment.flip"] == 0.0
    assert all(r for r in digits.reasons)


@pytest.mark.parametrize("n", [200, 1_000, 5_000, 20_000])
def test_small_data_trains_more_epochs_in_steps_that_fit_the_data(n):
    c = choose(profile(n))
    o = c.overrides
    step = o["batch_size"] * o["accumulate_steps"]
    assert o["batch_size"] <= 256 and n // step >= 3  # several optimizer steps an epoch
    assert 7 <= o["epochs"] <= 200 and o["optim.lr_reference_batch"] == 1024
    bigger = choose(profile(n * 4))
    more = bigger.overrides.get("epochs", get_recipe(bigger.recipe).overrides["epochs"])
    assert more <= o["epochs"]  # a larger set needs fewer passes ...
    assert more * n * 4 > o["epochs"] * n  # ... but sees more images in all
    assert len(c.reasons) >= 2


def test_large_images_are_resized_and_grey_ones_get_the_narrow_net():
    big = choose(profile(3_000, 128, 96)).overrides
    assert big["data.image_size"] == 64
    assert "data.image_size" not in choose(profile(3_000, 64, 64)).overrides
    assert choose(profile(3_000, 8, 8)).overrides["data.image_size"] == 16
    assert choose(profile(3_000, 28, 28, 1)).overrides["model_args.widths"] == [32, 64, 64]
    assert choose(profile(3_000, 32, 32, 3)).overrides["model_args.widths"] == [32, 128, 128]


def _print_config(capsys, *argv) -> tuple[list[str], dict]:
    assert main(["train", *argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.startswith("#")], yaml.safe_load(out)


def test_print_config_shows_the_choice_and_why_and_any_key_still_wins(easy_folder, capsys):
    reasons, cfg = _print_config(capsys, "--data", str(easy_folder))
    assert cfg["recipe"] == "auto" and cfg["model"] == "fastnet" and len(reasons) >= 2
    assert all(r.startswith("# auto: ") for r in reasons)
    _, cfg = _print_config(capsys, "--data", str(easy_folder), "epochs=3", "optim.lr=5")
    assert (cfg["epochs"], cfg["optim"]["lr"], cfg["model"]) == (3, 5.0, "fastnet")
    # CIFAR-10 itself: exactly the fast recipe
    _, cfg = _print_config(capsys, "--data", "cifar10")
    assert from_dict(cfg) == resolve_config("fast", data="cifar10")


@pytest.mark.parametrize("argv", [["model=resnet18"], ["--recipe", "fast"], ["--config", "CFG"]])
def test_a_recipe_a_config_or_a_model_turns_the_rules_off(easy_folder, capsys, tmp_path, argv):
    (tmp_path / "c.yaml").write_text("epochs: 2\n")
    argv = [a.replace("CFG", str(tmp_path / "c.yaml")) for a in argv]
    reasons, cfg = _print_config(capsys, "--data", str(easy_folder), *argv)
    assert reasons == [] and cfg["recipe"] != "auto"
    if argv[0] == "model=resnet18":
        assert from_dict(cfg) == resolve_config(None, None, str(easy_folder), {"model": "resnet18"})


def test_explicit_recipe_auto_and_the_auto_recipe_listing(easy_folder, capsys):
    reasons, cfg = _print_config(capsys, "--recipe", "auto", "--data", str(easy_folder), "model_args.widths=[8,16,16]")
    assert cfg["recipe"] == "auto" and reasons and cfg["model_args"]["widths"] == [8, 16, 16]
    assert main(["recipes"]) == 0 and any(r.startswith("auto ") for r in capsys.readouterr().out.splitlines())
    assert main(["recipes", "auto"]) == 0 and "1000*sqrt" in capsys.readouterr().out


def test_train_with_nothing_but_data_trains_the_chosen_net(easy_folder, tmp_path, capsys):
    from cifarlab import train

    run = tmp_path / "run"
    assert main(["train", "--data", str(easy_folder), "--out", str(run), "epochs=2", "threads=1"]) == 0
    out = capsys.readouterr().out
    assert "auto: " in out and f"run folder: {run}" in out
    saved = nested_to_dotted(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved["recipe"] == "auto" and saved["model"] == "fastnet" and saved["epochs"] == 2
    assert json.loads((run / "summary.json").read_text())["final_val_acc"] >= 0.9  # chance is 0.25
    # the Python API makes the same choice
    summary = train(data=str(easy_folder), out=tmp_path / "api", epochs=1, threads=1, quiet=True)
    assert summary.model == "fastnet" and summary.recipe == "auto"
