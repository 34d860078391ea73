"""Why do the mix-conv seed recipes score far below their reports on a GPU? One prepared command.

On an H200 (benchmarks/gpu_check.py, 2026-11-30) seed001 reached its report's training accuracy (96%)
while its held-out accuracy swung between 35% and 72% from one epoch to the next (report: 85.22% best).
Such swings with a stable training loss point at the evaluation, not the learning, so each epoch this
probe measures the same weights three ways:

  val_eval     held-out images, eval mode (batch norm's running statistics): what cifarlab reports
  val_batch    held-out images, batch norm on each batch's own statistics (running stats untouched)
  train_eval   5,000 training images, eval mode: if this is far below the training accuracy, eval mode
               itself is wrong (running statistics that do not describe the activations)
  *_recal      the same after recomputing the statistics from 2,000 other training images under the
               epoch's weights (cifarlab's bn_recalibrate, "precise BN")

and first checks MixConv2d's fast forms against its literal K-convolution form on this device, in
both memory layouts and at training and evaluation batch sizes (a cuDNN grouped-convolution fault
would show here). Variants run as concurrent processes on one split (split_seed 0):

    python benchmarks/gpu_check.py prepare ../shared/datasets/cifar10-jpeg/train   # once, here
    # on the device (run tool, carry [".gpu_data"]):
    PYTHONPATH=src python3 benchmarks/seed_probe.py run .gpu_data/train.zip --out $OUT --deadline 200

A CPU dry run of the same code: `... run SMALL_IMAGE_FOLDER --out /tmp/p --deadline 120 --set epochs=1`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# name -> (recipe, overrides as KEY=VALUE)
VARIANTS = {
    "seed001": ("seed001", []),
    "seed001-nhwc-off": ("seed001", ["channels_last=false"]),
    "seed001-k1": ("seed001", ["model_args.k=1"]),
    "seed001-normalized": ("seed001", ["data.normalize=dataset"]),
    "seed001-sgd": ("seed001", ["optim.name=sgd", "optim.lr=0.05"]),
    "seed001-no-decay": ("seed001", ["optim.weight_decay=0"]),
    "seed001-softmax": ("seed001", ["model_args.mixing=softmax"]),  # the mixing the 2026-11-30 runs had
    "seed002": ("seed002", []),
    "seed002-running": ("seed002", ["eval_bn_stats=running"]),  # eval mode, which its report never set
}


def check_mixconv(device: str) -> list[dict]:
    """Largest relative difference of the grouped and wide forms from the literal form."""
    import torch

    from cifarlab.models.mixconv import MixConv2d

    torch.manual_seed(0)
    rows = []
    for c_in, c_out, hw in [(32, 64, 32), (64, 128, 16), (256, 256, 4)]:
        layer = MixConv2d(c_in, c_out, 4).to(device)
        with torch.no_grad():
            layer.router.weight.mul_(10)  # sharp, sample-dependent mixing, as trained routers become
        for n in (256, 1024):
            for layout in ("nchw", "nhwc"):
                x = torch.randn(n, c_in, hw, hw, device=device)
                if layout == "nhwc":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    ref = layer.forward_reference(x.contiguous())
                    scale = ref.abs().max().item()
                    rows.append({"c_in": c_in, "c_out": c_out, "hw": hw, "n": n, "layout": layout,
                                 "grouped": (layer.forward_grouped(x) - ref).abs().max().item() / scale,
                                 "wide": (layer.forward_wide(x) - ref).abs().max().item() / scale})
    return rows


def probe_one(name: str, data: str, work: Path, rows_file: Path, extra: list[str], data_root: Path) -> None:
    """Train one variant; after each epoch's checkpoint, measure it the three ways."""
    import numpy as np
    import torch

    from cifarlab.api import train_run
    from cifarlab.augment import Augmenter
    from cifarlab.config import parse_overrides
    from cifarlab.data import load_splits
    from cifarlab.evaluate import recalibrate_batchnorm
    from cifarlab.inference import model_from_checkpoint
    from cifarlab.loader import DeviceLoader
    from cifarlab.recipes import resolve_config

    recipe, fixed = VARIANTS[name]
    overrides = parse_overrides([f"data.root={data_root}", *fixed, *extra])
    cfg = resolve_config(recipe, None, data, overrides)
    splits = load_splits(cfg.data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    norm = Augmenter(None, splits.mean, splits.std, channels_last=cfg.channels_last)
    # random subsets in random order: the held-out split is stored class by class, and a one-class batch
    # normalised with its own statistics says nothing (the first probe's val_batch column read ~22%)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(splits.train_y))
    n_calib = min(2000, len(pick) // 2)
    calib, train_pick = pick[:n_calib], pick[n_calib:n_calib + 5000]
    val_pick = rng.permutation(len(splits.val_y))[:5000]
    sets = {"val": (splits.val_x[val_pick], splits.val_y[val_pick]),
            "train": (splits.train_x[train_pick], splits.train_y[train_pick]),
            "calib": (splits.train_x[calib], splits.train_y[calib])}
    loaders = {k: DeviceLoader(x, y, cfg.batch_size, device, norm, shuffle=False, augment=False)
               for k, (x, y) in sets.items()}
    out = work / name

    def accuracy(model, loader, batch_stats: bool) -> float:
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        model.train(batch_stats)
        for m in bns:
            m.momentum = 0.0  # batch statistics for normalising; running statistics left as they were
        correct = 0
        with torch.no_grad():
            for x, y in loader.epoch(0):
                correct += (model(x).argmax(1) == y).sum().item()
        for m, s in zip(bns, saved):
            m.momentum = s
        return correct / loader.num_images

    def on_epoch(row: dict) -> None:
        state = torch.load(out / "checkpoints" / "last.pt", map_location=device, weights_only=True)
        model = model_from_checkpoint(state, device, cfg.channels_last)
        probe = {"variant": name, "epoch": row["epoch"], "train_acc": row.get("train_acc"),
                 "val_eval": accuracy(model, loaders["val"], False),
                 "val_batch": accuracy(model, loaders["val"], True),
                 "train_eval": accuracy(model, loaders["train"], False),
                 "train_batch": accuracy(model, loaders["train"], True),
                 "calibrated_images": recalibrate_batchnorm(model, loaders["calib"].epoch(0), device, "fp32"),
                 "val_recal": accuracy(model, loaders["val"], False),
                 "train_recal": accuracy(model, loaders["train"], False),
                 "seconds": row.get("seconds")}
        with open(rows_file, "a") as f:
            f.write(json.dumps(probe) + "\n")

    train_run(cfg, out=out, on_epoch=on_epoch)


def run(data: str, out: Path, variants: list[str], extra: list[str], deadline_s: float, work: Path,
        data_root: Path | None) -> None:
    import torch

    from cifarlab.config import DataConfig
    from cifarlab.data import load_splits

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = work / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    equivalence = check_mixconv(device)
    worst = max(max(r["grouped"], r["wide"]) for r in equivalence)
    print(f"mixconv fast forms vs literal on {device}: worst relative difference {worst:.2e}", flush=True)
    data_root = data_root or work / "data"
    load_splits(DataConfig(spec=data, root=str(data_root)))  # decode once; the runs read the cache
    procs = {}
    for name in variants:
        rows = work / f"{name}.rows.jsonl"
        cmd = [sys.executable, __file__, "one", name, data, "--work", str(work), "--rows", str(rows), "--data-root", str(data_root),
               "--set", *extra]
        log = open(work / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"}), log)
    while any(p.poll() is None for p, _ in procs.values()) and time.perf_counter() - t0 < deadline_s:
        time.sleep(2)
    for p, log in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()
        log.close()
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "equivalence": equivalence,
               "runs": {}, "log_tails": {}}
    for name in variants:
        rows_file = work / f"{name}.rows.jsonl"
        results["runs"][name] = [json.loads(line) for line in rows_file.read_text().splitlines()] \
            if rows_file.is_file() else []
        results["log_tails"][name] = (work / f"{name}.log").read_text()[-1500:]
    (out / "probe_results.json").write_text(json.dumps(results, indent=1))
    cols = ["val_eval", "val_batch", "val_recal", "train_eval", "train_batch", "train_recal"]
    lines = [f"{'variant':19} {'ep':>3} {'train':>6} " + " ".join(f"{c:>11}" for c in cols)]
    for name, rows in results["runs"].items():
        for r in rows:
            lines.append(f"{name:19} {r['epoch']:3d} {r['train_acc']:6.3f} " + " ".join(f"{r[c]:11.3f}" for c in cols))
        if not rows:
            lines.append(f"{name:19} no epoch finished; log tail:\n{results['log_tails'][name][-600:]}")
    (out / "probe_results.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    r = sub.add_parser("run")
    r.add_argument("data")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    r.add_argument("--deadline", type=float, default=200.0)
    r.add_argument("--work", type=Path, default=Path("/tmp/seed_probe_runs"))
    r.add_argument("--data-root", type=Path, default=None, help="decode cache (default: inside --work)")
    o = sub.add_parser("one")
    o.add_argument("variant", choices=list(VARIANTS))
    o.add_argument("data")
    o.add_argument("--work", type=Path, required=True)
    o.add_argument("--rows", type=Path, required=True)
    o.add_argument("--set", nargs="*", default=[])
    o.add_argument("--data-root", type=Path, required=True)
    args = ap.parse_args()
    if args.step == "run":
        run(args.data, args.out, args.variants, list(args.set), args.deadline, args.work, args.data_root)
    else:
        probe_one(args.variant, args.data, args.work, args.rows, list(args.set), args.data_root)


if __name__ == "__main__":
    main()
