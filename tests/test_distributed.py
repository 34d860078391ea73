"""torchrun with 2 CPU processes (gloo) trains exactly what 1 process trains with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cifarlab.cli import main
from cifarlab.runs import load_checkpoint

# whiten_bias_epochs=1: the stem's bias freezes before epoch 2, so DDP is rebuilt mid-run (and must still agree)
COMMON = ["model=fastnet", "model_args={widths: [8, 16, 16], whiten_bias_epochs: 1}", "batch_size=32",
          "eval_batch_size=64", "epochs=2",
          "precision=fp32", "threads=1", "optim.lr=0.05", "augment.flip_mode=alternate", "augment.translate_px=2",
          "data.val_fraction=0.25", "--quiet"]


def torchrun(args, tmp_path, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "cifarlab", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_two_gloo_processes_equal_one_process(easy_folder, tmp_path):
    data = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache")]
    assert main(["train", "--out", str(tmp_path / "one"), *data, *COMMON]) == 0
    done = torchrun(["--out", str(tmp_path / "two"), *data, *COMMON], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert one["model"].keys() == two["model"].keys()  # plain batch-norm names: checkpoints interchange
    for key, a in one["model"].items():
        b = two["model"][key]
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
        else:
            assert torch.equal(a, b), key
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 2
    for r1, r2 in zip(m1, m2):  # losses reduced over ranks = the single process's
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["val_acc"] == pytest.approx(r1["val_acc"], abs=1e-9)
    assert (tmp_path / "two" / "summary.json").is_file() and not (tmp_path / "two" / ".lock").exists()


def test_torchrun_needs_an_explicit_run_folder(easy_folder, tmp_path):
    done = torchrun(["--data", str(easy_folder / "train"), *COMMON], tmp_path)
    assert done.returncode != 0 and "pass --out RUN_DIR" in done.stderr


def test_torchrun_resumes_a_run_interrupted_after_its_first_epoch(easy_folder, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed by 2 processes ends where 1 uninterrupted process ends."""
    from conftest import stop_after_checkpoint

    data = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache")]
    assert main(["train", "--out", str(tmp_path / "clean"), *data, *COMMON]) == 0
    undo = stop_after_checkpoint(monkeypatch, 1)
    assert main(["train", "--out", str(tmp_path / "cut"), *data, *COMMON]) == 130
    undo()
    done = torchrun(["--resume", str(tmp_path / "cut"), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, v in b["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(a["model"][key], v, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
