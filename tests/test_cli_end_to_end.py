"""The real CLI, end to end: train -> eval -> resume, on tiny data, asserting numbers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from cifarlab.cli import main
from cifarlab.config import from_dict
from cifarlab.runs import load_checkpoint
from conftest import stop_after_checkpoint

TINY = ["model=resnet18", "model_args.width=8", "batch_size=32", "eval_batch_size=64", "optim.lr=0.05", "threads=1"]
ROW_KEYS = {"epoch", "lr", "train_images", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_second"}


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_time(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]


def test_train_eval_on_an_easy_set(easy_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=4", "data.val_fraction=0.2",
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out and f"cifarlab eval {run}" in out

    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(set(r) == ROW_KEYS for r in rows)
    assert rows[-1]["val_acc"] >= 0.9  # chance is 0.25
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_train"] == 256 and summary["num_val"] == 64 and summary["best_val_acc"] >= 0.9
    assert summary["parameters"] == sum(p.numel() for p in load_checkpoint(run / "checkpoints" / "best.pt")["model"].values()
                                        if p.dtype.is_floating_point and p.ndim > 0) - _bn_buffers(run)
    cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert cfg.epochs == 4 and cfg.model_args == {"width": 8} and cfg.data.val_fraction == 0.2

    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 4 and state["classes"] == ["class0", "class1", "class2", "class3"]
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(state)

    # evaluate on the separate test folder (PATH/<class>/*)
    assert main(["eval", str(run), "--data", str(easy_folder / "test")]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n"] == 80 and ev["accuracy"] >= 0.9 and ev["loss"] < 1.0
    assert f"accuracy {ev['accuracy']:.4f}" in capsys.readouterr().out


def _bn_buffers(run):
    """running_mean/var are floating tensors in the state dict but not parameters."""
    sd = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    return sum(v.numel() for k, v in sd.items() if k.endswith(("running_mean", "running_var")))


def test_same_seed_same_run(easy_folder, tmp_path):
    for name in ("a", "b"):
        assert main(["train", "--data", str(easy_folder / "train"), "--out", str(tmp_path / name), "epochs=2", "--quiet",
                     "augment.rotation_deg=10", "augment.brightness=0.2", "ema_decay=0.9", *TINY]) == 0
    assert without_time(metrics(tmp_path / "a")) == without_time(metrics(tmp_path / "b"))


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "cifarlab", *args], env


def test_kill_9_then_resume_matches_an_uninterrupted_run(easy_folder, tmp_path):
    """SIGKILL after the first epoch's checkpoint; --resume must end exactly where a clean run ends."""
    common = ["--data", str(easy_folder / "train"), "epochs=3", "--quiet", "ema_decay=0.8", "augment.cutout_px=4",
              "data.image_size=32", *TINY]
    clean = tmp_path / "clean"
    assert main(["train", "--out", str(clean), *common]) == 0

    killed = tmp_path / "killed"
    cmd, env = _cli("train", "--out", str(killed), *common)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and (killed / "checkpoints" / "last.pt").is_file():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {proc.stderr.read()[-500:]}"
    assert not (killed / "summary.json").exists()
    assert 1 <= len(metrics(killed)) <= 2  # killed during epoch 2 (or just after its line)

    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    assert without_time(metrics(killed)) == without_time(metrics(clean))
    a = load_checkpoint(killed / "checkpoints" / "last.pt")
    b = load_checkpoint(clean / "checkpoints" / "last.pt")
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in b["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert not (killed / ".lock").exists()


def test_bad_inputs_are_one_line(tmp_path, easy_folder, capsys):
    cases = [
        (["train", "--data", str(tmp_path / "missing")], "pass --data PATH to a folder of images"),
        (["train", "--data", "cifar10"], "pass --data PATH"),
        (["eval", str(tmp_path / "norun")], "run folder not found"),
        (["train", "--resume", str(tmp_path / "norun")], "has no config.yaml"),
        (["train", "--data", str(easy_folder / "train"), "model=resnet99"], "unknown model 'resnet99'"),
        (["train", "--data", str(easy_folder / "train"), "model_args.depth=3"], "has no option 'depth'"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_mismatched_checkpoint_is_a_clear_error(easy_folder, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=1", "--quiet", *TINY]) == 0
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    state["config"]["model_args"] = {"width": 16}
    torch.save(state, run / "checkpoints" / "best.pt")
    assert main(["eval", str(run)]) == 2
    assert "checkpoint does not fit model 'resnet18'" in capsys.readouterr().err
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", str(run)]) == 2
    assert "unreadable or unsafe" in capsys.readouterr().err


def test_existing_run_folder_is_not_overwritten(easy_folder, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=1", *TINY]) == 2
    assert "already exists" in capsys.readouterr().err and (run / "keep.txt").read_text() == "mine"


def test_help_is_short_with_examples(capsys):
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"], ["models", "--help"], ["recipes", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and len(text.splitlines()) < 45


@pytest.mark.slow
def test_real_jpegs_one_epoch(jpeg_subset, tmp_path):
    """The done-when path on a slice of the real JPEGs: 450/50 split, whole run folder, eval on another folder."""
    run = tmp_path / "jpeg"
    assert main(["train", "--data", str(jpeg_subset), "--out", str(run), "model=resnet18", "epochs=1", "--quiet",
                 *TINY]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert (s["num_train"], s["num_val"], len(s["classes"])) == (450, 50, 10)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"}
    assert main(["eval", str(run), "--data", str(jpeg_subset)]) == 0
    assert json.loads((run / "eval.json").read_text())["n"] == 500


def test_ctrl_c_exits_cleanly_and_says_how_to_resume(easy_folder, tmp_path):
    run = tmp_path / "int"
    cmd, env = _cli("train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=50", "data.image_size=32",
                    *TINY)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "last.pt").is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"cifarlab train --resume {run}" in err and "Traceback" not in err
    assert "epoch   1/50" in out  # plain per-epoch lines when stdout is not a terminal
    assert not (run / ".lock").exists() and len(metrics(run)) >= 1


def test_divergence_stops_with_one_line(easy_folder, tmp_path, capsys):
    run = tmp_path / "nan"
    argv = ["train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=2", "--quiet", *TINY,
            "optim.lr=1e30", "schedule.warmup_epochs=0", "label_smoothing=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "loss became" in err and "lower optim.lr" in err and err.count("\n") == 1
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("extra, sizes", [
    ([], [12, 12, 16, 16]),
    (["augment.min_res_px=8", "augment.min_res_epochs=1"], [8, 12, 16, 16]),  # 8 -> 12 -> 16 px
])
def test_progressive_resizing_trains_early_epochs_small(easy_folder, tmp_path, monkeypatch, extra, sizes):
    seen = []
    import cifarlab.models.resnet as resnet

    original = resnet.ResNet.forward

    def spy(self, x):
        if self.training:
            seen.append(x.shape[-1])
        return original(self, x)

    monkeypatch.setattr(resnet.ResNet, "forward", spy)
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(tmp_path / "p"), "epochs=4", "--quiet",
                 "augment.low_res_px=12", "augment.low_res_epochs=2", *extra, *TINY]) == 0
    per_epoch = len(seen) // 4
    assert [set(seen[e * per_epoch:(e + 1) * per_epoch]) for e in range(4)] == [{s} for s in sizes]
    assert metrics(tmp_path / "p")[-1]["val_acc"] > 0.5


def test_epoch_lines_say_how_long_is_left_scaled_for_progressive_resizing(capsys):
    from cifarlab.config import from_dict
    from cifarlab.progress import Reporter
    from cifarlab.augment import epoch_resolution
    from cifarlab.trainer import _Trainer

    cfg = from_dict({"epochs": 4, "augment": {"low_res_px": 16, "low_res_epochs": 2, "min_res_px": 8,
                                               "min_res_epochs": 1}})
    assert [epoch_resolution(cfg.augment, e) for e in range(4)] == [8, 16, 0, 0]
    trainer = _Trainer.__new__(_Trainer)  # only what _seconds_left reads
    trainer.cfg, trainer.epoch = cfg, 1
    trainer.splits = type("S", (), {"train_x": np.zeros((1, 32, 32, 3))})()
    # epoch 1 took 10 s at 8 px: 16 px costs 4x, 32 px 16x per epoch, plus 1 s of validation each
    assert trainer._seconds_left(10.0, 1.0) == pytest.approx(40 + 160 + 160 + 3)
    row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5,
           "seconds": 10.0, "images_per_second": 100.0}
    Reporter().end_epoch(row, 4, True, 363.0)
    Reporter().end_epoch({**row, "epoch": 4}, 4, True, 0.0)
    Reporter().end_epoch(row, 4, True, 4000.0)
    Reporter().end_epoch({**row, "val_loss": float("nan"), "val_nonfinite": 1}, 4, True, 0.0)
    Reporter().end_epoch({**row, "val_loss": float("nan"), "val_nonfinite": 1234}, 4, True, 0.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("~6m left") and "left" not in lines[1] and lines[2].endswith("~1h 07m left")
    assert "val_loss nan" in lines[3] and "(1 image with inf/nan logits)" in lines[3]  # a nan loss says why
    assert "(1,234 images with inf/nan logits)" in lines[4] and "inf/nan" not in lines[0]


def test_predict_prints_writes_csv_and_kaggle(easy_folder, tmp_path, capsys):
    import csv

    run = tmp_path / "pr"
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=4", "--quiet", *TINY]) == 0
    test = easy_folder / "test"
    # a Kaggle-style flat folder: numeric stems, no class folders
    flat = tmp_path / "flat"
    flat.mkdir()
    truth = {}
    for i, f in enumerate(sorted(test.rglob("*.png"))[::5]):
        (flat / f"{i + 1}.png").write_bytes(f.read_bytes())
        truth[str(i + 1)] = f.parent.name
    capsys.readouterr()
    assert main(["predict", str(run), str(flat / "1.png"), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip().split("  ")
    assert line[0].endswith("1.png") and len(line) == 3
    p1, p2 = float(line[1].split()[1]), float(line[2].split()[1])
    assert 0 <= p2 <= p1 <= 1
    out = tmp_path / "sub.csv"
    assert main(["predict", str(run), str(flat), "--kaggle", "--csv", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == [str(i) for i in range(1, len(truth) + 1)]
    accuracy = sum(truth[i] == label for i, label in rows[1:]) / len(truth)
    assert accuracy >= 0.9  # the ids map back to the right images
    topk = tmp_path / "top.csv"
    assert main(["predict", str(run), f"{flat}/*.png", "--csv", str(topk), "--topk", "3"]) == 0
    header, *body = list(csv.reader(topk.open()))
    assert header == ["path", "class1", "probability1", "class2", "probability2", "class3", "probability3"]
    assert len(body) == len(truth) and all(float(r[2]) >= float(r[4]) >= float(r[6]) for r in body)
    assert main(["predict", str(run), str(tmp_path / "nothing*.png")]) == 2
    assert "no image found" in capsys.readouterr().err


def test_report_files_hold_the_run_numbers(easy_folder, tmp_path, capsys):
    import csv

    run = tmp_path / "rep"
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=3", "--quiet",
                 "data.val_fraction=0.25", *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    rows = list(csv.DictReader((run / "per_class.csv").open()))
    assert [r["class"] for r in rows] == summary["classes"]
    assert sum(int(r["n"]) for r in rows) == summary["num_val"] == 80
    correct = sum(int(r["correct"]) for r in rows)
    assert correct / 80 == pytest.approx(summary["best_val_acc"])  # report evaluates the best checkpoint
    page = (run / "report.html").read_text()
    assert f"{summary['best_val_acc'] * 100:.2f}%" in page and page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page  # self-contained
    for name in ("curves.png", "confusion.png", "predictions.png", "mistakes.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (run / name).unlink()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert list(csv.DictReader((run / "per_class.csv").open())) == rows
    assert (run / "confusion.png").is_file() and "report.html" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", __import__("cifarlab.models", fromlist=["list_models"]).list_models())
def test_every_model_trains_one_epoch_through_the_cli(name, easy_folder, tmp_path):
    """Default settings (channels_last, bf16 autocast where available) for every registered model."""
    from test_models import SMALL

    args = SMALL.get(name, {})
    overrides = [f"model={name}", "epochs=1", "--quiet", "batch_size=32", "threads=1"]
    if args:
        overrides.append("model_args=" + json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}))
    run = tmp_path / name
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "data.image_size=32", *overrides]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["model"] == name and s["epochs"] == 1 and s["num_train"] == 288
    row = metrics(run)[0]
    assert row["train_images"] == 288 and np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    # the saved best checkpoint is the model that was scored: evaluating it again gives the same accuracy
    assert main(["eval", str(run), "--quiet"]) == 0
    assert json.loads((run / "eval.json").read_text())["accuracy"] == pytest.approx(s["best_val_acc"], abs=1e-9)


@pytest.mark.parametrize("extra", [
    ["model=fastnet", "model_args={widths: [8, 16, 16]}", "optim.name=muon", "augment.flip_mode=alternate",
     "tta=flip_translate"],
    ["schedule.name=plateau", "schedule.plateau_patience=0", "optim.name=rmsprop", "optim.lr=0.01",
     "accumulate_steps=2", "ema_decay=0.5"],
])
def test_interrupted_after_a_checkpoint_resumes_identically(easy_folder, tmp_path, monkeypatch, extra):
    """Optimizer, scheduler and EMA state of other set-ups survive a stop between epochs too."""
    common = ["--data", str(easy_folder / "train"), "epochs=3", "--quiet", "batch_size=32", "threads=1", *extra]
    assert main(["train", "--out", str(tmp_path / "clean"), *common]) == 0
    undo = stop_after_checkpoint(monkeypatch, 1)
    assert main(["train", "--out", str(tmp_path / "cut"), *common]) == 130
    undo()
    assert len(metrics(tmp_path / "cut")) == 1
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert without_time(metrics(tmp_path / "cut")) == without_time(metrics(tmp_path / "clean"))
    a = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("extra", [[], ["accumulate_steps=2", "ema_decay=0.7", "augment.cutout_px=4"]])
def test_ctrl_c_mid_epoch_saves_progress_and_resumes_identically(easy_folder, tmp_path, monkeypatch, capsys, extra):
    """SIGINT in the middle of epoch 2: last.pt holds the weights after the finished optimizer steps and the
    batch position; --resume continues from that batch and ends bit for bit where a clean run ends."""
    from cifarlab.augment import Augmenter

    common = ["--data", str(easy_folder / "train"), "epochs=3", "--quiet", *TINY, *extra]
    assert main(["train", "--out", str(tmp_path / "clean"), *common]) == 0
    calls = {"n": 0}
    original = Augmenter.__call__
    per_epoch = 288 // 32  # 320 easy images, 10% held out, full batches of 32
    stop_at = 4 if extra else 3  # the first optimizer-step boundary after the signal

    def interrupt_in_epoch_2(self, x, gen=None, flip=None):
        if gen is not None:
            calls["n"] += 1
            if calls["n"] == per_epoch + 3:  # the 3rd training batch of epoch 2
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, gen, flip)

    monkeypatch.setattr(Augmenter, "__call__", interrupt_in_epoch_2)
    cut = tmp_path / "cut"
    assert main(["train", "--out", str(cut), *common]) == 130
    err = capsys.readouterr().err
    assert f"interrupted at epoch 2, batch {stop_at}/9" in err and f"cifarlab train --resume {cut}" in err
    monkeypatch.setattr(Augmenter, "__call__", original)
    state = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["batch"] == stop_at and len(metrics(cut)) == 1
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    assert without_time(metrics(cut)) == without_time(metrics(tmp_path / "clean"))
    a = load_checkpoint(cut / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    if b["ema"]:
        assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in b["ema"])


def test_a_corrupted_last_checkpoint_falls_back_to_the_previous_one(easy_folder, tmp_path, monkeypatch, capsys):
    common = ["--data", str(easy_folder / "train"), "epochs=3", *TINY]
    assert main(["train", "--out", str(tmp_path / "clean"), "--quiet", *common]) == 0
    undo = stop_after_checkpoint(monkeypatch, 2)
    cut = tmp_path / "cut"
    assert main(["train", "--out", str(cut), "--quiet", *common]) == 130
    undo()
    last = cut / "checkpoints" / "last.pt"
    assert load_checkpoint(cut / "checkpoints" / "last.prev.pt")["epoch"] == 1
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a half-written copy, a full disk...
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and "resuming from the previous checkpoint last.prev.pt (after epoch 1)" in out
    assert without_time(metrics(cut)) == without_time(metrics(tmp_path / "clean"))
    a = load_checkpoint(last)["model"]
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    # with no good checkpoint left the error names the file and the fix
    for f in (last, cut / "checkpoints" / "last.prev.pt"):
        f.write_bytes(b"garbage")
    (cut / "summary.json").unlink()
    assert main(["train", "--resume", str(cut), "--quiet"]) == 2
    assert "last.prev.pt is unreadable or unsafe" in capsys.readouterr().err


def test_nonfinite_batches_can_be_skipped_and_are_counted(easy_folder, tmp_path, monkeypatch, capsys):
    from cifarlab.augment import Augmenter

    original = Augmenter.__call__
    calls = {"n": 0}

    def poison_two_batches(self, x, gen=None, flip=None):
        out = original(self, x, gen, flip)
        if gen is not None:
            calls["n"] += 1
            if calls["n"] in (2, 12):  # epoch 1 batch 2, epoch 2 batch 3
                out = out * float("nan")
        return out

    monkeypatch.setattr(Augmenter, "__call__", poison_two_batches)
    common = ["--data", str(easy_folder / "train"), "epochs=2", "--quiet", *TINY]
    assert main(["train", "--out", str(tmp_path / "stop"), *common]) == 2
    assert "skip_nonfinite_batches" in capsys.readouterr().err
    calls["n"] = 0
    run = tmp_path / "skip"
    assert main(["train", "--out", str(run), "skip_nonfinite_batches=2", *common]) == 0
    rows = metrics(run)
    assert [r["skipped_batches"] for r in rows] == [1, 1]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert rows[-1]["val_acc"] > 0.5


def test_a_second_process_cannot_write_a_running_run_and_a_stale_lock_is_taken_over(easy_folder, tmp_path, capsys):
    run = tmp_path / "busy"
    cmd, env = _cli("train", "--data", str(easy_folder / "train"), "--out", str(run), "epochs=200", "--quiet", *TINY)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoints" / "last.pt").is_file():
            time.sleep(0.02)
        assert (run / ".lock").read_text() == str(proc.pid)
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        assert f"in use by process {proc.pid}" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait(30)
    # the killed process left its lock behind: its pid is dead, so the next resume takes the lock over
    assert (run / ".lock").read_text() == str(proc.pid)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 200
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "epochs": len(metrics(run)) + 1}, sort_keys=False))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "summary.json").is_file() and not (run / ".lock").exists()


def test_atomic_writes_keep_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    from cifarlab import runs

    target = tmp_path / "metrics.jsonl"
    runs.atomic_write_text(target, "old\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", disk_full)
    with pytest.raises(OSError):
        runs.atomic_write_text(target, "new\n" * 1000)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_fast_recipe_trains_compiled_in_bf16_across_a_resolution_change(easy_folder, tmp_path):
    """compile=true with bf16 autocast: inductor once turned fastnet's global max-pool backward into NaN."""
    run = tmp_path / "compiled"
    assert main(["train", "--recipe", "fast", "--data", str(easy_folder / "train"), "--out", str(run), "--quiet",
                 "compile=true", "precision=bf16", "epochs=2", "model_args.widths=[8,16,16]",
                 "model_args.head_scale=0.0625", "batch_size=32", "accumulate_steps=2", "eval_batch_size=64",
                 "augment.low_res_px=12", "augment.low_res_epochs=1", "augment.min_res_epochs=0", "threads=1"]) == 0
    rows = metrics(run)
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)


def test_stop_after_epochs_keeps_the_full_schedule_and_resumes_to_the_same_run(easy_folder, tmp_path, capsys):
    """--stop-after-epochs N trains the first N epochs of the FULL schedule (a per-epoch cosine here, whose lr
    depends on the run's length), exits 0 saying how to go on, and a resume ends where an uninterrupted run ends."""
    common = ["--data", str(easy_folder / "train"), "epochs=4", "batch_size=30", "threads=1", "drop_last=false",
              "schedule.name=cosine", "schedule.per_epoch=true", "schedule.warmup_epochs=0", "model=fastnet",
              "model_args={widths: [8, 16, 16]}", "optim.lr=0.05"]
    assert main(["train", "--out", str(tmp_path / "clean"), "--quiet", *common]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), "--stop-after-epochs", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "stopped after epoch 2 of 4" in out and f"cifarlab train --resume {tmp_path / 'cut'}" in out
    assert len(metrics(tmp_path / "cut")) == 2 and not (tmp_path / "cut" / "summary.json").exists()
    clean = metrics(tmp_path / "clean")
    assert [r["lr"] for r in metrics(tmp_path / "cut")] == [r["lr"] for r in clean[:2]]
    assert clean[1]["lr"] < clean[0]["lr"]  # the lr fell as a 4-epoch cosine, not a 2-epoch one
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet", "--stop-after-epochs", "3"]) == 0
    assert len(metrics(tmp_path / "cut")) == 3
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert without_time(metrics(tmp_path / "cut")) == without_time(clean)
    a = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    # drop_last=false trains on every image each epoch, the last batch short (288 = 9 x 30 + 18); true drops it
    assert json.loads((tmp_path / "clean" / "summary.json").read_text())["num_train"] == 288
    assert {r["train_images"] for r in clean} == {288}


@pytest.mark.parametrize("drop_last, images", [("false", 288), ("true", 270)])
def test_drop_last_decides_whether_the_short_batch_trains(easy_folder, tmp_path, drop_last, images):
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(tmp_path / "r"), "--quiet", "epochs=1",
                 "batch_size=30", f"drop_last={drop_last}", "model=resnet18", "model_args.width=8", "optim.lr=0.05", "threads=1"]) == 0
    assert metrics(tmp_path / "r")[0]["train_images"] == images


def test_model_typos_fail_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    """An unknown model= or model option is reported before the (possibly minutes-long) data load."""
    import cifarlab.trainer as train_mod

    def no_loading(cfg):
        raise AssertionError("the data was loaded before the model name was checked")

    monkeypatch.setattr(train_mod, "load_splits", no_loading)
    for bad, words in [(["model=resnet99"], "unknown model 'resnet99'"),
                       (["model=resnet18", "model_args.depth=3"], "has no option 'depth'")]:
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *bad]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_a_single_class_folder_is_refused_with_the_fix(tmp_path, capsys):
    from conftest import easy_images, write_folder

    x, y = easy_images(5, classes=1)
    root = write_folder(tmp_path / "one", x, y, names=["cats"])
    assert main(["train", "--data", str(root), "--data-root", str(tmp_path / "c"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has one class (cats)" in err and "two or more" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_resume_may_move_the_data_cache_but_not_change_the_data(easy_folder, tmp_path, capsys):
    common = ["--quiet", "epochs=2", "model=fastnet", "model_args={widths: [8, 16, 16]}", "threads=1"]
    run = tmp_path / "r"
    assert main(["train", "--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache1"), "--out",
                 str(run), "--stop-after-epochs", "1", *common]) == 0
    assert main(["train", "--resume", str(run), "--data-root", str(tmp_path / "cache2"), "--quiet"]) == 0
    assert len(metrics(run)) == 2 and (tmp_path / "cache2" / "cache").is_dir()
    assert main(["train", "--resume", str(run), "data.val_fraction=0.3"]) == 2
    assert "cannot change 'data.val_fraction' when resuming" in capsys.readouterr().err


def test_resume_may_change_how_a_mix_conv_layer_computes(easy_folder, tmp_path):
    """model_args.form picks among forms of the same function, so a long seed run started under the fixed
    rules can continue with form=timed: the timing then runs (its choices land in the cache file)."""
    run = tmp_path / "r"
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "--quiet", "--stop-after-epochs",
                 "1", "epochs=2", "model=mixconv002", "model_args={widths: [4, 4, 6, 6]}", "threads=1"]) == 0
    forms_file = tmp_path / "home" / ".cache" / "cifarlab" / "mixconv_forms.json"
    assert not forms_file.exists()
    assert main(["train", "--resume", str(run), "--quiet", "model_args.form=timed"]) == 0
    assert len(metrics(run)) == 2 and forms_file.is_file()


def test_resuming_under_other_code_says_so_in_one_line(easy_folder, tmp_path, capsys):
    """A checkpoint records the cifarlab commit and torch version that wrote it; resuming under others still
    works, with one line saying the remaining epochs may differ in the last bits from an uninterrupted run."""
    from cifarlab.trainer import code_version

    common = ["epochs=3", "model=fastnet", "model_args={widths: [8, 16, 16]}", "threads=1"]
    run = tmp_path / "r"
    assert main(["train", "--data", str(easy_folder / "train"), "--out", str(run), "--quiet", "--stop-after-epochs",
                 "1", *common]) == 0
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["code"] == code_version() and state["code"]["torch"] == torch.__version__
    assert main(["train", "--resume", str(run), "--stop-after-epochs", "2"]) == 0
    assert "the checkpoint was written under" not in capsys.readouterr().out  # same code: nothing to say
    state = torch.load(last, weights_only=True)
    state["code"] = {"cifarlab": "0123456789ab", "torch": "2.6.0"}
    torch.save(state, last)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert ("note: the checkpoint was written under cifarlab 0123456789ab, torch 2.6.0 and the run continues under "
            f"cifarlab {code_version()['cifarlab'] or 'unknown'}, torch {torch.__version__}") in out
    assert len(metrics(run)) == 3
