"""Evaluation speed per batch size, side by side in one run (eval mode, no grad, channels_last).

Picks the CPU default of `eval_batch_size=0` (runtime.eval_batch_size): large batches push a
conv net's activations out of cache on a CPU, so smaller ones can be faster.

    PYTHONPATH=src python3 benchmarks/eval_batch.py
    PYTHONPATH=src python3 benchmarks/eval_batch.py --images 10000 --batches 2000 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_seconds, print_table  # noqa: E402

MODELS = {  # label: (model, in_channels, side, model_args)
    "fastnet (fast)": ("fastnet", 3, 32, {}),
    "fastnet 32/128/128 (auto, small data)": ("fastnet", 3, 32, {"widths": [32, 128, 128]}),
    "fastnet 32/64/64 (fast-fmnist)": ("fastnet", 1, 28, {"widths": [32, 64, 64]}),
    "resnet18": ("resnet18", 3, 32, {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--batches", type=int, nargs="+", default=[2000, 1024, 512, 256, 128])
    args = ap.parse_args()
    from cifarlab.models import get_model

    rows = []
    for label, (name, c, side, kw) in MODELS.items():
        model = get_model(name, num_classes=10, in_channels=c, **kw).eval().to(memory_format=torch.channels_last)
        x = torch.randn(args.images, c, side, side).contiguous(memory_format=torch.channels_last)

        def run(bs):
            with torch.no_grad():
                for i in range(0, len(x), bs):
                    model(x[i:i + bs])
        times = {bs: best_seconds(lambda: run(bs), repeats=2) for bs in args.batches}
        base = times[args.batches[0]]
        rows.append([label] + [f"{args.images / times[bs]:,.0f} img/s ({base / times[bs]:.2f}x)" for bs in args.batches])
    print(f"{args.images} images, {torch.get_num_threads()} threads; ratio = speed vs batch {args.batches[0]}")
    print_table(["model"] + [f"batch {bs}" for bs in args.batches], rows)


if __name__ == "__main__":
    main()
