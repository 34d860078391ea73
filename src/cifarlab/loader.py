"""Device-resident batching: the whole split is one uint8 tensor on the training device.

Owns the per-epoch seeded shuffle, DDP sharding of each global batch, and calling
the augmenter on each batch. Each epoch's randomness comes from a generator seeded
by (seed, epoch), so a run resumed at an epoch boundary sees exactly the batches an
uninterrupted run would. Never decodes files and never builds models.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .augment import Augmenter, epoch_resolution, resize_batch


def epoch_generator(seed: int, epoch: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """A fresh generator for one epoch; large odd multipliers keep (seed, epoch) pairs apart."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1))
    return gen


class DeviceLoader:
    """Iterate (x, y) batches of a split that lives on `device`.

    x is normalised float NCHW (channels_last when asked), y int64. With
    `shuffle=True` each epoch's order and augmentations come from epoch_generator.
    Under DDP pass rank/world_size: batch_size stays the GLOBAL batch and each rank
    takes its contiguous share of every global batch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 augmenter: Augmenter, *, shuffle: bool, augment: bool, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # e.g. a memory-mapped cache: torch wants to own writable memory
            images = images.copy()
        self.images = torch.from_numpy(images).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.augmenter = augmenter
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        # dropping a ragged last batch keeps batch-norm statistics sane, but never drop everything
        self.drop_last = drop_last and len(self.labels) >= batch_size
        self.rank = rank
        self.world_size = world_size
        cfg = augmenter.cfg
        self.alternate_flip = None
        if augment and cfg is not None and cfg.flip and cfg.flip_mode == "alternate":
            # a fixed random half of the images (p of them) flips on even epochs, the rest on odd epochs
            g = epoch_generator(seed, -1, self.device, stream=1)
            self.alternate_flip = torch.rand(len(self.labels), generator=g, device=self.device) < cfg.flip

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def order(self, epoch: int = 0, gen: torch.Generator | None = None) -> torch.Tensor:
        """The order the images of `epoch` come in: a seeded permutation when shuffling, else as stored."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        gen = gen if gen is not None else epoch_generator(self.seed, epoch, self.device)
        return torch.randperm(n, generator=gen, device=self.device)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch, optionally skipping the first `start_batch` (mid-epoch resume); training
        epochs come at the augmentation config's resolution for that epoch (progressive resizing)."""
        n = len(self.labels)
        size = epoch_resolution(self.augmenter.cfg, epoch) if self.augment else 0
        gen = epoch_generator(self.seed, epoch, self.device) if (self.shuffle or self.augment) else None
        order = self.order(epoch, gen) if self.shuffle else None
        aug_gen = gen if self.augment else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            idx = order[lo:hi] if order is not None else torch.arange(lo, hi, device=self.device)
            x = self.images[idx]
            flip = None
            if self.alternate_flip is not None:
                flip = self.alternate_flip[idx] ^ bool(epoch % 2)
            if b < start_batch:
                if aug_gen is not None:
                    self.augmenter(x, aug_gen, flip)  # advance the random stream exactly as this batch did
                continue
            x, y = self.augmenter(x, aug_gen, flip), self.labels[idx]
            x = resize_batch(x, size, self.augmenter.channels_last)
            if self.world_size > 1:
                # every rank augments the whole global batch (same draws as one process would make), then
                # keeps its contiguous share: N processes train on exactly one process's images
                share = -(-(hi - lo) // self.world_size)
                keep = slice(self.rank * share, (self.rank + 1) * share)
                x, y = x[keep], y[keep]
            yield x, y
