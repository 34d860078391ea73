"""Predict throughput of a trained run: the float (bf16) forward vs int8, and `cifarlab predict` end to end.

    python benchmarks/predict_throughput.py RUN_DIR FOLDER_OF_IMAGES [--rounds 3]

Forward passes alternate float and int8 on the same batches (so machine noise hits both alike);
the end-to-end rows run the real CLI in fresh processes (imports, decoding and CSV included),
alternating too. The int8 calibration is made once before timing (it is cached per checkpoint).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def forward_rates(run_dir: Path, batch: int, batches: int, rounds: int) -> tuple[float, float, float]:
    from cifarlab import runtime
    from cifarlab.inference import load_trained

    run = load_trained(run_dir, "best", "cpu")
    quant = run.int8(log=lambda *_: None)
    c, h, w = run.record.image_shape
    g = torch.Generator().manual_seed(0)
    xs = [run.normaliser()(torch.randint(0, 256, (batch, h, w, c), generator=g, dtype=torch.uint8))
          for _ in range(batches)]
    times = {"float": 0.0, "int8": 0.0}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, r in (("float", run), ("int8", quant)):
                r.model(xs[0])  # warm-up: oneDNN primitives for this shape
                t = time.perf_counter()
                for x in xs:
                    with runtime.autocast(r.device, r.precision):
                        r.model(x)
                times[name] += time.perf_counter() - t
    n = batch * batches * rounds
    return n / times["float"], n / times["int8"], run.precision


def end_to_end(run_dir: Path, images: Path, rounds: int) -> dict[str, float]:
    exe = shutil.which("cifarlab") or sys.executable + " -m cifarlab"
    best = {"float": float("inf"), "int8": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, extra in (("float", []), ("int8", ["--int8"])):
                cmd = [*exe.split(), "predict", str(run_dir), str(images), "--tta", "none", "--quiet",
                       "--csv", str(Path(tmp) / "p.csv"), *extra]
                t = time.perf_counter()
                subprocess.run(cmd, check=True)
                best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("images", type=Path, help="a folder of images to predict (the end-to-end rows)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from cifarlab.predict import expand_inputs

    n = len(expand_inputs([str(args.images)]))
    fl, q8, precision = forward_rates(args.run_dir, args.batch, args.batches, args.rounds)
    print(f"{'what':44} {'float (' + precision + ')':>14} {'int8':>10} {'int8/float':>10}")
    print(f"{'forward img/s, batch ' + str(args.batch):44} {fl:14,.0f} {q8:10,.0f} {q8 / fl:9.2f}x")
    e2e = end_to_end(args.run_dir, args.images, args.rounds)
    label = f"cifarlab predict, {n:,} images, best wall s"
    print(f"{label:44} {e2e['float']:14.2f} {e2e['int8']:10.2f} {e2e['float'] / e2e['int8']:9.2f}x")
    print(f"{'  = images/s end to end':44} {n / e2e['float']:14,.0f} {n / e2e['int8']:10,.0f}")


if __name__ == "__main__":
    main()
