"""Decode-once cost of an image folder: cold decode (parallel PIL) vs cache load, side by side.

    python benchmarks/decode.py ../shared/datasets/cifar10-jpeg/train
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cifarlab.config import DataConfig
from cifarlab.data import folder, load_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        files = folder.list_files(args.path)
        listed = time.perf_counter() - t
        t = time.perf_counter()
        decoded = folder.decode_files(files)
        decode = time.perf_counter() - t
        cfg = DataConfig(spec=str(args.path), root=root)
        t = time.perf_counter()
        load_splits(cfg)  # first run: decode + write cache + split + stats
        first = time.perf_counter() - t
        t = time.perf_counter()
        load_splits(cfg)  # second run: cache hit
        second = time.perf_counter() - t
    n = len(decoded.labels)
    print(f"{'step':34} {'seconds':>8} {'images/s':>10}")
    print(f"{'list files':34} {listed:8.2f}")
    print(f"{'decode (parallel PIL)':34} {decode:8.2f} {n / decode:10,.0f}")
    print(f"{'load_splits, cold (decode+cache)':34} {first:8.2f} {n / first:10,.0f}")
    print(f"{'load_splits, warm (cache hit)':34} {second:8.2f} {n / second:10,.0f}")
    print(f"cache speed-up: {first / second:.1f}x  ({n:,} images {decoded.images.shape[1:]})")


if __name__ == "__main__":
    main()
