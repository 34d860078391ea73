"""Augmentation pipeline throughput: cifarlab's batched device loader vs torchvision DataLoader + PIL.

Both sides start from the same decoded uint8 images in memory and end with normalised
float batches; torchvision uses the usual Dataset(Image.fromarray -> transforms ->
ToTensor -> Normalize) with num_workers=2. Ratios are measured side by side in one run.

    python benchmarks/augment_throughput.py ../shared/datasets/cifar10-jpeg/train --images 10000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import print_table
from cifarlab.augment import Augmenter
from cifarlab.config import AugmentConfig
from cifarlab.loader import DeviceLoader

MEAN, STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.261)

PIPELINES = {
    "flip + 4px crop": dict(ours=AugmentConfig(flip=0.5, translate_px=4, translate_pad="zeros"),
                            tv=lambda T: [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4)]),
    "resized crop + rotation 15": dict(ours=AugmentConfig(flip=0.5, translate_px=0, resized_crop=True, rotation_deg=15),
                                       tv=lambda T: [T.RandomResizedCrop(32), T.RandomRotation(15),
                                                     T.RandomHorizontalFlip()]),
    "affine + colour jitter": dict(ours=AugmentConfig(flip=0.0, translate_px=0, rotation_deg=10, affine_translate=0.1,
                                                      affine_scale=(0.9, 1.1), brightness=0.2, contrast=0.2,
                                                      saturation=0.2, hue=0.1),
                                   tv=lambda T: [T.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                                                 T.ColorJitter(0.2, 0.2, 0.2, 0.1)]),
}


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_rate(images, labels, extra, batch, workers) -> float:
    import torchvision.transforms as T

    tf = T.Compose(extra(T) + [T.ToTensor(), T.Normalize(MEAN, STD)])
    dl = torch.utils.data.DataLoader(_PilDataset(images, labels, tf), batch_size=batch, shuffle=True,
                                     num_workers=workers, persistent_workers=False)
    t = time.perf_counter()
    n = sum(len(y) for _, y in dl)
    return n / (time.perf_counter() - t)


def cifarlab_rate(images, labels, cfg, batch) -> float:
    aug = Augmenter(cfg, MEAN, STD)
    loader = DeviceLoader(images, labels, batch, torch.device("cpu"), aug, shuffle=True, augment=True)
    list(loader.epoch(0))  # warm-up
    t = time.perf_counter()
    n = sum(len(y) for _, y in loader.epoch(1))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="image folder (decoded with cifarlab's loader)")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from cifarlab.config import DataConfig
    from cifarlab.data import load_splits

    s = load_splits(DataConfig(spec=args.data, val_fraction=0))
    idx = np.random.default_rng(0).permutation(len(s.train_y))[: args.images]
    images, labels = s.train_x[idx], s.train_y[idx]
    rows = []
    for name, p in PIPELINES.items():
        ours = cifarlab_rate(images, labels, p["ours"], args.batch)
        theirs = torchvision_rate(images, labels, p["tv"], args.batch, args.workers)
        rows.append([name, ours, theirs, f"{ours / theirs:.1f}x"])
    print(f"{len(labels):,} images, batch {args.batch}, torchvision num_workers={args.workers}, "
          f"{torch.get_num_threads()} torch threads")
    print_table(["pipeline", "cifarlab img/s", "torchvision+PIL img/s", "speed-up"], rows)


if __name__ == "__main__":
    main()
