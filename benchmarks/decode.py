"""Decode-once cost of an image folder: cold decode (parallel PIL) vs cache load, side by side.

    python benchmarks/decode.py ../shared/datasets/cifar10-jpeg/train [--read-threads 1 8]

--read-threads also times decoding with the files dropped from the page cache first
(posix_fadvise DONTNEED) at each count of file-reading threads per worker process, alternated
twice. Only this machine's page cache is dropped: a virtual disk's host may still hold the files,
so a truly cold first read (a fresh machine) waits longer than this shows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from cifarlab.config import DataConfig
from cifarlab.data import folder, load_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--read-threads", type=int, nargs="*", default=[],
                    help="file-reading threads per worker to compare, page cache dropped before each")
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
    if args.read_threads:
        times = {k: [] for k in args.read_threads}
        for _ in range(2):
            for k in args.read_threads:
                drop_from_page_cache(files.paths)
                folder._READ_THREADS = k
                t = time.perf_counter()
                folder.decode_files(files)
                times[k].append(time.perf_counter() - t)
        print(f"\n{'read threads per worker':24} {'decode s (page cache dropped)':>30}")
        for k, ts in times.items():
            print(f"{k:<24} {' / '.join(f'{x:.2f}' for x in ts):>30}")


def drop_from_page_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


if __name__ == "__main__":
    main()
