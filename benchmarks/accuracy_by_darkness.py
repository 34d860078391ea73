"""Held-out accuracy of trained runs by how dark each image is: quartiles of the fraction of pixel values
below 128 (mid-grey).

Why: report 002 normalises, jitters and normalises again, and torchvision's ColorJitter clamps its float
input to [0, 1], so in training images every value darker than mid-grey becomes one value, while test
images keep theirs. A net trained that way should lose most on dark held-out images; this measures it.
Every run is scored on the first run's validation split, as each run scores itself (its eval_bn_stats).

    python benchmarks/accuracy_by_darkness.py runs/seed002 runs/seed002-onenorm:best
"""

from __future__ import annotations

import argparse

import numpy as np

QUARTILES = 4


def darkness_quartiles(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quartile of each uint8 NHWC image by its fraction of values < 128: 0 brightest, the edges)."""
    dark = (images < 128).mean(axis=(1, 2, 3))
    edges = np.quantile(dark, np.linspace(0, 1, QUARTILES + 1))
    return np.clip(np.searchsorted(edges, dark, side="right") - 1, 0, QUARTILES - 1), edges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN[:CHECKPOINT]", help="run folders (checkpoint: last, best)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from cifarlab.data import load_splits
    from cifarlab.inference import load_trained

    splits = quartile = None
    for arg in args.runs:
        run_dir, _, checkpoint = arg.partition(":")
        run = load_trained(run_dir, checkpoint or "last", args.device)
        if splits is None:
            splits = load_splits(run.cfg.data)
            quartile, edges = darkness_quartiles(splits.val_x)
            print("quartile edges (fraction of pixel values < 128):", " ".join(f"{e:.3f}" for e in edges))
        result = run.evaluate(splits.val_x, splits.val_y)
        assert np.array_equal(result.labels, splits.val_y)  # scored in the split's order, as the quartiles are
        correct = result.predictions == result.labels
        per = [correct[quartile == q].mean() for q in range(QUARTILES)]
        print(f"{arg}: {correct.mean():.2%} overall; brightest to darkest quartile "
              + " / ".join(f"{p:.2%}" for p in per) + f"; darkest minus brightest {per[-1] - per[0]:+.2%}")


if __name__ == "__main__":
    main()
