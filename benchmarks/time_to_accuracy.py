"""Time-to-accuracy curves of finished runs: validation accuracy vs cumulative training seconds.

Reads RUN_DIR/metrics.jsonl of each run (cifarlab's, or benchmarks/airbench_port.py's) and writes
time_to_accuracy.csv beside each run and time_to_accuracy.png beside the first (all runs on one plot).

    cifarlab train --recipe fast --data ../shared/datasets/cifar10-jpeg/train --out runs/fast
    python benchmarks/airbench_port.py ../shared/datasets/cifar10-jpeg/train --out runs/airbench94
    python benchmarks/time_to_accuracy.py runs/fast runs/airbench94 --labels fast "airbench94 port"
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(epoch, cumulative training seconds, val_acc) per epoch; also written to run_dir/time_to_accuracy.csv."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds, points = 0.0, []
    for r in rows:
        seconds += r["seconds"]
        points.append((r["epoch"], round(seconds, 1), r["val_acc"]))
    with open(run_dir / "time_to_accuracy.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_seconds", "val_acc"])
        w.writerows(points)
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", type=Path, nargs="+")
    ap.add_argument("--labels", nargs="+", help="legend names, one per run (default: the folder names)")
    args = ap.parse_args()
    labels = args.labels or [d.name for d in args.run_dirs]
    if len(labels) != len(args.run_dirs):
        ap.error(f"--labels got {len(labels)} names for {len(args.run_dirs)} runs; give one per run")
    curves = [(d, curve(d)) for d in args.run_dirs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (d, points), label in zip(curves, labels):
        ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=label)
        print(f"{d}:")
        for p in points:
            print(f"  epoch {p[0]:>3}  {p[1]:8.1f} s  val_acc {p[2]:.4f}")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation accuracy")
    ax.set_title("time to accuracy")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    png = args.run_dirs[0] / "time_to_accuracy.png"
    fig.savefig(png, dpi=120)
    print(f"wrote time_to_accuracy.csv in each run folder and {png}")


if __name__ == "__main__":
    main()
