import numpy as np
import torch

from cifarlab.augment import Augmenter
from cifarlab.config import AugmentConfig
from cifarlab.loader import DeviceLoader


def make(n=103, batch=10, **kw):
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # pixel (0,0) carries the index
    labels = np.arange(n)
    aug = Augmenter(None, (0.0,) * 3, (1 / 255,) * 3, channels_last=True)  # x*255: exact integers back
    return DeviceLoader(images, labels, batch, torch.device("cpu"), aug, **kw)


def test_epoch_covers_every_image_once_and_reshuffles():
    loader = make(shuffle=True, augment=False, seed=1)
    assert len(loader) == 11
    e0 = torch.cat([y for _, y in loader.epoch(0)])
    e1 = torch.cat([y for _, y in loader.epoch(1)])
    assert sorted(e0.tolist()) == list(range(103)) and sorted(e1.tolist()) == list(range(103))
    assert not torch.equal(e0, e1)
    assert torch.equal(e0, torch.cat([y for _, y in make(shuffle=True, augment=False, seed=1).epoch(0)]))
    assert not torch.equal(e0, torch.cat([y for _, y in make(shuffle=True, augment=False, seed=2).epoch(0)]))


def test_images_travel_with_their_labels():
    loader = make(shuffle=True, augment=False, seed=3)
    for x, y in loader.epoch(0):
        assert torch.equal(x[:, 0, 0, 0].round().long(), y % 256)
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_drop_last_and_eval_order():
    assert len(make(shuffle=True, augment=False, drop_last=True)) == 10
    assert len(make(n=5, shuffle=True, augment=False, drop_last=True)) == 1  # never drops everything
    ys = torch.cat([y for _, y in make(shuffle=False, augment=False).epoch(0)])
    assert ys.tolist() == list(range(103))


def test_resume_mid_epoch_sees_the_same_batches():
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    aug = Augmenter(AugmentConfig(flip=0.5, translate_px=2, brightness=0.3), (0.5,) * 3, (0.25,) * 3)
    loader = DeviceLoader(images, np.arange(64), 8, torch.device("cpu"), aug, shuffle=True, augment=True, seed=5)
    full = list(loader.epoch(2))
    rest = list(loader.epoch(2, start_batch=3))
    assert len(rest) == 5
    for (xa, ya), (xb, yb) in zip(full[3:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_ddp_shards_partition_each_global_batch_with_the_same_augmentation():
    images = np.random.default_rng(1).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    aug = Augmenter(AugmentConfig(flip=0.5, flip_mode="alternate", translate_px=2, brightness=0.3),
                    (0.5,) * 3, (0.25,) * 3)

    def batches(**kw):
        loader = DeviceLoader(images, np.arange(40), 8, torch.device("cpu"), aug, shuffle=True, augment=True,
                              seed=9, drop_last=True, **kw)
        return list(loader.epoch(1))

    per_rank = [batches(rank=r, world_size=2) for r in range(2)]
    for b, (x, y) in enumerate(batches()):
        assert torch.equal(torch.cat([per_rank[0][b][1], per_rank[1][b][1]]), y)
        assert torch.equal(torch.cat([per_rank[0][b][0], per_rank[1][b][0]]), x)  # identical augmented pixels


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs():
    n = 400
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, :, 0, 0] = 255  # a bright left column: flipped images have it on the right
    aug = Augmenter(AugmentConfig(flip=0.5, flip_mode="alternate", translate_px=0), (0.0,) * 3, (1.0,) * 3)
    loader = DeviceLoader(images, np.arange(n), 50, torch.device("cpu"), aug, shuffle=True, augment=True, seed=4)

    def flipped_by_label(epoch):
        out = {}
        for x, y in loader.epoch(epoch):
            for xi, yi in zip(x, y):
                out[int(yi)] = bool(xi[0, 0, 3] > 0.5)
        return out

    e0, e1, e2 = flipped_by_label(0), flipped_by_label(1), flipped_by_label(2)
    assert all(e0[i] != e1[i] for i in range(n)) and e0 == e2
    assert 0.4 < sum(e0.values()) / n < 0.6
