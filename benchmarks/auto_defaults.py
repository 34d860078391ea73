"""Measure `cifarlab train --data X` defaults on small subsets of a real image folder.

The rules behind the automatic defaults (src/cifarlab/auto.py) come from these runs. `make` builds
class-balanced subsets as symlink folders SUBSET/train/<class>/* with a fixed, disjoint test folder
SUBSET/test/<class>/* (images no training run sees), so a run's validation accuracy is its held-out
score; `run` trains each variant on each subset, one after another, and prints one table.

    python benchmarks/auto_defaults.py make ../shared/datasets/cifar10-jpeg/train --out /tmp/sub \
        --per-class 20 100 --test-per-class 50
    python benchmarks/auto_defaults.py run /tmp/sub/n100 --out /tmp/auto-runs \
        --variant auto= --variant old-default=model=resnet18 \
        --variant e40="model=fastnet epochs=40 batch_size=128"

A variant is LABEL=OVERRIDES ("auto=" is plain `cifarlab train --data X`). Accuracy is the last
epoch's (with TTA where the config has it), never the best epoch's: picking the best epoch would
use the held-out images to choose.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def make(source: Path, out: Path, per_class: list[int], test_per_class: int, seed: int) -> None:
    """One subset folder per count; all share the same test images, drawn first so none is ever trained on."""
    rng = random.Random(seed)
    classes = sorted(d.name for d in source.iterdir() if d.is_dir())
    picks = {}
    for c in classes:
        files = sorted(p for p in (source / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rng.shuffle(files)
        picks[c] = files
    for n in per_class:
        root = out / f"n{n}"
        for split, chosen in (("test", lambda f: f[:test_per_class]),
                              ("train", lambda f: f[test_per_class:test_per_class + n])):
            for c in classes:
                d = root / split / c
                d.mkdir(parents=True, exist_ok=True)
                for f in chosen(picks[c]):
                    link = d / f.name
                    if not link.exists():
                        link.symlink_to(f.resolve())
        print(f"{root}: {n * len(classes)} training and {test_per_class * len(classes)} test images")


def run_variant(data: Path, out: Path, label: str, overrides: str, threads: int) -> list:
    run_dir = out / f"{data.name}-{label}"
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        cmd = [sys.executable, "-m", "cifarlab", "train", "--data", str(data), "--out", str(run_dir), "--quiet",
               *shlex.split(overrides)]
        if threads:
            cmd.append(f"threads={threads}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t = time.perf_counter()
        log = open(out / f"{data.name}-{label}.log", "w")
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t
        if rc != 0:
            return [data.name, label, overrides, "failed", "", "", "", f"{wall:.0f}"]
        (run_dir / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    s = json.loads(summary_file.read_text())
    wall = float((run_dir / "wall_seconds.txt").read_text()) if (run_dir / "wall_seconds.txt").is_file() else 0.0
    final = s["final_val_acc_tta"] if s.get("final_val_acc_tta") is not None else s["final_val_acc"]
    return [data.name, label, overrides or "(none)", s["model"], s["epochs"], f"{100 * final:.2f}%",
            f"{s['train_seconds']:.0f}", f"{wall:.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="build subset folders of symlinks")
    m.add_argument("source", type=Path, help="an ImageFolder-style folder SOURCE/<class>/*")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--per-class", type=int, nargs="+", required=True)
    m.add_argument("--test-per-class", type=int, default=50)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="train variants on subsets and print a table")
    r.add_argument("subsets", type=Path, nargs="+")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--variant", action="append", required=True, metavar="LABEL=OVERRIDES")
    r.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.source, args.out, args.per_class, args.test_per_class, args.seed)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in args.subsets:
        for v in args.variant:
            label, _, overrides = v.partition("=")
            rows.append(run_variant(data, args.out, label, overrides, args.threads))
            print("  ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print_table(["subset", "variant", "overrides", "model", "epochs", "held-out acc (final)", "train s", "wall s"],
                rows)


if __name__ == "__main__":
    main()
