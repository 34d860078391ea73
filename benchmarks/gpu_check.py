"""The `fast` recipe on a lent GPU, as one prepared command: accuracy and time per epoch, side by side.

The device machine gets only this repository (at most 64 MiB) and cannot reach ../shared, so the
training JPEGs travel as one uncompressed zip (48.9 MiB for the 50,000 CIFAR-10 images, which cifarlab
reads as a `--data` archive). Two steps:

    # here: pack the images into .gpu_data/train.zip (git-ignored)
    python benchmarks/gpu_check.py prepare ../shared/datasets/cifar10-jpeg/train
    # on the device (run tool, carry [".gpu_data"], timeout_s ~540):
    PYTHONPATH=src python3 benchmarks/gpu_check.py run .gpu_data/train.zip --out $OUT

`run` trains each variant on the same 45,000 / 5,000 split (split_seed 0): `fast` as is, `fast` with
one 1024-image pass per step (micro-batches suit a CPU; a GPU may prefer the big batch), and `fast`
with torch.compile. It writes gpu_results.json plus each run's metrics.jsonl to --out (files at the
top level, so the run tool brings them back) and prints a table; feed the metrics to
benchmarks/time_to_accuracy.py for the curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zipfile
from pathlib import Path

VARIANTS = {
    "fast": {},
    "fast_b1024": {"batch_size": 1024, "accumulate_steps": 1},
    "fast_compiled": {"compile": True},
}


def prepare(folder: Path, out: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"gpu_check: no images under {folder}; pass the ImageFolder root (class folders inside)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # ZIP_STORED: JPEGs do not compress, and each member costs ~100 bytes of headers instead of tar's 1 KB
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in files:
            zf.write(p, p.relative_to(folder).as_posix())
    print(f"{len(files):,} images -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def run(data: str, out: Path, variants: list[str], overrides: dict) -> None:
    import torch

    from cifarlab.api import train_run
    from cifarlab.config import dotted_to_nested, merge
    from cifarlab.recipes import resolve_config
    from cifarlab.runs import RunDir

    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    work = Path("/tmp/gpu_check_runs")
    shutil.rmtree(work, ignore_errors=True)
    results = []
    for name in variants:
        changes = merge(dotted_to_nested(VARIANTS[name]), overrides)
        cfg = resolve_config("fast", data=data, overrides=merge(changes, {"data": {"root": str(work / "data")}}))
        t0 = time.perf_counter()
        summary = train_run(cfg, out=work / name)
        wall = time.perf_counter() - t0
        run_dir = RunDir(work / name)
        rows = run_dir.read_metrics()
        shutil.copy(run_dir.metrics_file, out / f"{name}.metrics.jsonl")
        results.append({"variant": name, "changes": VARIANTS[name], "val_acc": summary.final_val_acc,
                        "val_acc_tta": summary.final_val_acc_tta, "train_seconds": summary.train_seconds,
                        "wall_seconds": wall, "epoch_seconds": [r["seconds"] for r in rows],
                        "device": device, "torch": torch.__version__, "precision": summary.precision})
        (out / "gpu_results.json").write_text(json.dumps(results, indent=1))  # kept even if a later variant fails
    print(f"\n{'variant':15} {'val':>7} {'TTA':>7} {'train s':>8} {'wall s':>7}  epochs (s)")
    for r in results:
        tta = f"{r['val_acc_tta']:.4f}" if r["val_acc_tta"] is not None else "-"
        print(f"{r['variant']:15} {r['val_acc']:.4f} {tta:>7} {r['train_seconds']:8.1f} {r['wall_seconds']:7.1f}  "
              + " ".join(f"{s:.1f}" for s in r["epoch_seconds"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="pack an image folder into one uncompressed zip")
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, default=Path(".gpu_data/train.zip"))
    r = sub.add_parser("run", help="train the fast variants and write results to --out")
    r.add_argument("data", help="the zip from `prepare` (or any cifarlab --data spec)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every variant")
    args = ap.parse_args()
    if args.step == "prepare":
        prepare(args.folder, args.out)
    else:
        from cifarlab.config import parse_overrides

        overrides = parse_overrides(args.set) if args.set else {}  # nested, typed as on the command line
        run(args.data, args.out, args.variants, overrides)


if __name__ == "__main__":
    main()
