"""int8 inference (predict/eval --int8): BN folding, calibration and its cache, the FX path, refusals."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from cifarlab import get_model
from cifarlab.cli import main

TINY = ["batch_size=32", "eval_batch_size=64", "threads=1", "data.val_fraction=0.25", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fastnet and a tiny resnet18 trained on an easy 4-class set, plus unlabelled images to predict."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import easy_images, write_folder

    root = tmp_path_factory.mktemp("int8")
    x, y = easy_images(60, seed=1)
    data = write_folder(root / "train", x, y)
    common = ["--data", str(data), "--data-root", str(root / "cache"), "epochs=3", *TINY]
    fast, resnet = root / "fast", root / "resnet"
    assert main(["train", "--out", str(fast), "model=fastnet", "model_args={widths: [8, 16, 16]}", *common]) == 0
    assert main(["train", "--out", str(resnet), "model=resnet18", "model_args={width: 8}", *common]) == 0
    tx, ty = easy_images(15, seed=7)
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    from PIL import Image

    for i, img in enumerate(tx):
        Image.fromarray(img).save(unlabelled / f"{i:03d}.png")
    return {"fast": fast, "resnet": resnet, "data": data, "images": unlabelled, "labels": ty}


def _predict(run, images, tmp_path, name, *extra):
    out = tmp_path / f"{name}.csv"
    assert main(["predict", str(run), str(images), "--csv", str(out), "--quiet", "--tta", "none", *extra]) == 0
    with open(out) as fh:
        return [row["class1"] for row in csv.DictReader(fh)]


def test_folded_fastnet_computes_what_fastnet_computes():
    torch.manual_seed(0)
    net = get_model("fastnet", num_classes=10, widths=(8, 16, 16)).eval()
    with torch.no_grad():  # BN statistics and biases that are not the identity, so folding has work to do
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.fold_batchnorm()(x), net(x), rtol=1e-4, atol=1e-5)


def test_int8_predictions_match_the_float_model_and_eval_reports_its_accuracy(trained, tmp_path, capsys):
    run = trained["fast"]
    float_classes = _predict(run, trained["images"], tmp_path, "float")
    int8_classes = _predict(run, trained["images"], tmp_path, "int8", "--int8")
    agree = np.mean([a == b for a, b in zip(float_classes, int8_classes)])
    assert agree >= 0.9, agree
    cache = run / "checkpoints" / "best.int8-calibration.pt"
    assert cache.exists()
    saved = torch.load(cache, weights_only=True)
    assert any("activation_post_process" in k for k in saved["observers"])

    assert main(["eval", str(run)]) == 0
    assert main(["eval", str(run), "--int8"]) == 0
    out = capsys.readouterr().out
    assert "int8: calibrated on" in out and "(cached)" in out
    plain = json.loads((run / "eval.json").read_text())
    quant = json.loads((run / "eval-int8.json").read_text())
    assert quant["int8"] is True and quant["n"] == plain["n"]
    assert abs(quant["accuracy"] - plain["accuracy"]) <= 0.05


def test_the_calibration_cache_is_reused_and_dropped_when_the_checkpoint_changes(trained, tmp_path):
    from cifarlab.inference import load_trained

    src = trained["fast"]
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir)
    (run_dir / "checkpoints" / "best.int8-calibration.pt").unlink(missing_ok=True)
    logs = []
    first = load_trained(run_dir, "best", "cpu").int8(log=logs.append)
    second = load_trained(run_dir, "best", "cpu").int8(log=logs.append)
    assert "(cached)" not in logs[0] and "(cached)" in logs[1]
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(first.model(x), second.model(x))  # same ranges, same int8 model

    cache = run_dir / "checkpoints" / "best.int8-calibration.pt"
    saved = torch.load(cache, weights_only=True)
    saved["observers"] = {k: torch.zeros(3, 3) for k in saved["observers"]}  # shapes another PyTorch might write
    torch.save(saved, cache)
    load_trained(run_dir, "best", "cpu").int8(log=logs.append)
    assert "(cached)" not in logs[-1]
    cache.write_bytes(b"not a torch file")
    load_trained(run_dir, "best", "cpu").int8(log=logs.append)
    assert "(cached)" not in logs[-1]

    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["model"]["head.weight"] = state["model"]["head.weight"] * 2  # as if training went on
    torch.save(state, run_dir / "checkpoints" / "best.pt")
    load_trained(run_dir, "best", "cpu").int8(log=logs.append)
    assert "(cached)" not in logs[-1]


def test_without_the_runs_data_int8_calibrates_on_the_inputs_and_caches_nothing(trained, tmp_path, capsys):
    run_dir = tmp_path / "moved"
    shutil.copytree(trained["fast"], run_dir)
    (run_dir / "checkpoints" / "best.int8-calibration.pt").unlink(missing_ok=True)
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["data"]["spec"] = str(tmp_path / "gone")
    torch.save(state, run_dir / "checkpoints" / "best.pt")
    assert main(["predict", str(run_dir), str(trained["images"]), "--int8", "--tta", "none"]) == 0
    captured = capsys.readouterr()
    assert "calibrated on the first 60 images given" in captured.err
    assert len(captured.out.strip().splitlines()) == 60
    assert not (run_dir / "checkpoints" / "best.int8-calibration.pt").exists()


def test_models_without_fold_batchnorm_go_through_fx(trained, tmp_path):
    run = trained["resnet"]
    float_classes = _predict(run, trained["images"], tmp_path, "float")
    int8_classes = _predict(run, trained["images"], tmp_path, "int8", "--int8")
    assert np.mean([a == b for a, b in zip(float_classes, int8_classes)]) >= 0.8


def test_int8_refuses_dynamic_convolutions_in_one_line(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import easy_images, write_folder

    x, y = easy_images(8, seed=3)
    data = write_folder(tmp_path / "d", x, y)
    run = tmp_path / "mix"
    assert main(["train", "--data", str(data), "--data-root", str(tmp_path / "c"), "--out", str(run), "epochs=1",
                 "model=mixfastnet", "model_args={widths: [8, 16, 16]}", *TINY]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(data), "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--int8 cannot" in err and "drop --int8" in err


def test_a_bad_image_in_the_stream_is_named_or_skipped(trained, tmp_path, capsys, monkeypatch):
    from cifarlab.data import folder

    monkeypatch.setattr(folder, "_CHUNK", 16)  # 4 chunks through the worker pool, so order is tested too
    images = tmp_path / "imgs"
    shutil.copytree(trained["images"], images)
    (images / "030.png").write_bytes(b"not an image")
    assert main(["predict", str(trained["fast"]), str(images), "--tta", "none"]) == 2
    assert "030.png" in capsys.readouterr().err
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained["fast"]), str(images), "--skip-bad-images", "--csv", str(out),
                 "--tta", "none", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out)))
    names = [r["path"].rsplit("/", 1)[-1] for r in rows]
    assert len(rows) == 59 and "030.png" not in names and names == sorted(names)
