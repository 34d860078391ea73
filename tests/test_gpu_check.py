"""The prepared GPU command's own plumbing, checked on the CPU with a tiny folder: the seeds train with
model_args.form=timed and their per-layer form timings come back in --out."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SRC = BENCH.parent / "src"


def test_a_dry_run_trains_a_seed_with_timed_forms_and_returns_their_timings(tmp_path):
    from conftest import easy_images, write_folder

    x, y = easy_images(6, size=32, classes=4)
    data = write_folder(tmp_path / "train", x, y)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "run", str(data), "--out", str(out),
                           "--variants", "seed001", "--work", str(tmp_path / "work"), "--deadline", "300",
                           "--set", "epochs=1", "bn_recalibrate=8", "model_args.widths=[4,4,4,4,4,4,4,4,8,8,8]",
                           "threads=1"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_results.json").read_text())["results"]
    assert [r["variant"] for r in results] == ["seed001"] and results[0]["epochs_done"] == 1
    forms = json.loads((out / "mixconv_forms.json").read_text())
    # mixconv001: 32x32, 16x16, 8x8 and 4x4 maps, each timed forward+backward (training) and forward (eval)
    assert {k.split(" | ")[3] for k in forms} == {"fwd+bwd", "fwd"}
    assert all(e["form"] in e["ms"] and e["ms"][e["form"]] == min(e["ms"].values()) for e in forms.values())
    text = (out / "gpu_results.txt").read_text()
    assert "mix-conv forms timed per layer" in text and text.count("->") >= len(forms)
