"""Time-to-accuracy curve of a finished run: validation accuracy vs cumulative training seconds.

Reads RUN_DIR/metrics.jsonl and writes time_to_accuracy.csv and .png beside it.

    cifarlab train --recipe fast --data ../shared/datasets/cifar10-jpeg/train --out runs/fast
    python benchmarks/time_to_accuracy.py runs/fast
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds, points = 0.0, []
    for r in rows:
        seconds += r["seconds"]
        points.append((r["epoch"], round(seconds, 1), r["val_acc"]))
    csv_path = args.run_dir / "time_to_accuracy.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_seconds", "val_acc"])
        w.writerows(points)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[1] for p in points], [p[2] for p in points], marker="o")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"time to accuracy: {args.run_dir.name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.run_dir / "time_to_accuracy.png", dpi=120)
    for p in points:
        print(f"epoch {p[0]:>3}  {p[1]:8.1f} s  val_acc {p[2]:.4f}")
    print(f"wrote {csv_path} and time_to_accuracy.png")


if __name__ == "__main__":
    main()
