import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cifarlab.cli import main
from cifarlab.config import Config, from_dict, parse_overrides, to_yaml
from cifarlab.errors import UserError
from cifarlab.recipes import RECIPES, resolve_config


def test_overrides_are_typed():
    cfg = resolve_config(overrides=parse_overrides(
        ["optim.lr=0.01", "epochs=5", "augment.affine_scale=[0.9,1.1]", "compile=true", "model_args.width=8",
         "data.mean=0.5", "optim.name=adam"]))
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.epochs == 5 and isinstance(cfg.epochs, int)
    assert cfg.augment.affine_scale == (0.9, 1.1)
    assert cfg.compile is True
    assert cfg.model_args == {"width": 8}
    assert cfg.data.mean == (0.5,)
    assert cfg.optim.name == "adam"


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=0.1", ["unknown config key 'optim.lrr'", "lr,", "momentum"]),
    ("epochz=3", ["unknown config key 'epochz'", "epochs"]),
    ("optim.name=sdg", ["'optim.name' must be one of sgd, adam, adamw, rmsprop, asgd", "'sdg'"]),
    ("data.val_fraction=1.5", ["'data.val_fraction' must be < 1.0", "1.5"]),
    ("batch_size=0", ["'batch_size' must be > 0"]),
    ("optim.lr=-0.1", ["'optim.lr' must be > 0.0"]),
    ("epochs=abc", ["'epochs' expects an integer", "'abc'"]),
    ("epochs=2.5", ["'epochs' expects an integer"]),
    ("optim=3", ["'optim' is a section", "optim.name"]),
    ("augment.resized_crop_scale=[0.5]", ["expects 2 numbers"]),
    ("schedule.name=cosine_warm", ["'schedule.name' must be one of"]),
    ("compile=maybe", ["'compile' expects true or false"]),
    ("optim.lr=nan", ["'optim.lr' expects a finite number"]),
    ("device=tpu", ["'device' must be auto, cpu, cuda or cuda:N"]),
    ("noequals", ["must look like key=value"]),
])
def test_bad_values_name_the_key_and_the_fix(override, words):
    with pytest.raises(UserError) as err:
        resolve_config(overrides=parse_overrides([override]))
    for w in words:
        assert w in str(err.value)


def test_cli_bad_key_is_one_line_exit_2(capsys):
    assert main(["train", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'optim.lrr'" in err and "Traceback" not in err


def test_yaml_round_trip_and_precedence(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("epochs: 7\noptim:\n  lr: 0.3\ndata:\n  spec: from_file\n")
    cfg = resolve_config("resnet18-cifar", str(f), "from_flag", parse_overrides(["optim.lr=0.05"]))
    assert cfg.epochs == 7  # file beats recipe (30)
    assert cfg.data.spec == "from_flag"  # --data beats file
    assert cfg.optim.lr == 0.05  # key=value beats all
    assert cfg.augment.translate_px == 4  # untouched recipe value survives
    again = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        resolve_config(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        resolve_config(config_file=str(bad))


def test_every_recipe_resolves():
    for name in RECIPES:
        assert isinstance(resolve_config(name), Config)


def test_unknown_recipe():
    with pytest.raises(UserError, match="unknown recipe 'nope'; available: auto, default"):
        resolve_config("nope")


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["optim.lr", "data.val_fraction", "batch_size", "augment.flip", "label_smoothing",
                            "augment.rotation_deg", "ema_decay", "epochs"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                       st.text(max_size=8), st.booleans()))
def test_any_value_is_accepted_or_a_user_error(key, value):
    """Property: parsing never fails with anything but a UserError naming the key."""
    try:
        cfg = resolve_config(overrides=parse_overrides([f"{key}={value}"]))
    except UserError as err:
        assert key in str(err) or "key=value" in str(err)
        return
    section, _, name = key.rpartition(".")
    got = getattr(getattr(cfg, section) if section else cfg, name)
    if isinstance(got, float):
        assert math.isfinite(got), (key, value)  # NaN or inf never gets in
    assert from_dict(yaml.safe_load(to_yaml(cfg))) == cfg  # what was accepted survives config.yaml
