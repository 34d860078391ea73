import gzip
import os
import pickle
import time
import urllib.error

import numpy as np
import pytest
from PIL import Image

from cifarlab.config import DataConfig
from cifarlab.data import folder, load_folder_for_eval, load_splits, named
from cifarlab.data.readers import write_cifar_batch, write_idx
from cifarlab.data.splits import channel_stats, stratified_split
from cifarlab.errors import UserError
from conftest import easy_images, write_folder


def cfg(spec, tmp_path, **kw):
    return DataConfig(spec=str(spec), root=str(tmp_path / "root"), **kw)


# ---------------------------------------------------------------- image folders

def test_flat_layout_labels_follow_sorted_class_names(tmp_path):
    x, y = easy_images(5)
    write_folder(tmp_path / "d", x, y, names=["zebra", "ant", "moth", "cat"])
    s = load_splits(cfg(tmp_path / "d", tmp_path, val_fraction=0))
    assert s.classes == ["ant", "cat", "moth", "zebra"]
    # class 0 images were written into "zebra", which sorts last -> label 3
    zebra = s.train_x[s.train_y == 3]
    assert len(zebra) == 5 and np.array_equal(np.sort(zebra.reshape(5, -1), 0), np.sort(x[y == 0].reshape(5, -1), 0))
    assert s.val_source == "none" and len(s.val_y) == 0


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_train_and_test_layout(tmp_path, test_name):
    x, y = easy_images(6)
    write_folder(tmp_path / "d" / "train", x, y)
    tx, ty = easy_images(2, seed=5)
    write_folder(tmp_path / "d" / test_name, tx[ty < 2], ty[ty < 2])  # a test split may hold fewer classes
    s = load_splits(cfg(tmp_path / "d", tmp_path))
    assert len(s.train_y) == 24 and len(s.val_y) == 4  # no held-out split when test/ exists
    assert s.val_source == f"{test_name} folder"
    assert sorted(s.val_y.tolist()) == [0, 0, 1, 1]


def test_odd_files_are_converted_or_named(tmp_path):
    d = tmp_path / "odd" / "a"
    d.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 7, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(d / "grey.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(d / "deep.png")  # 16-bit grey
    Image.fromarray(rgb).resize((12, 12)).save(d / "big.png")  # a different size
    (d / ".DS_Store").write_bytes(b"\0junk")
    (d / "notes.txt").write_text("not an image")
    s = load_splits(cfg(tmp_path / "odd", tmp_path, val_fraction=0))
    assert s.train_x.shape == (6, 8, 8, 3)
    by_name = dict(zip(sorted(["big", "deep", "grey", "palette", "rgb", "rgba"]), s.train_x))
    assert np.array_equal(by_name["rgba"], rgb)  # alpha dropped
    assert np.array_equal(by_name["rgb"], rgb)
    assert (by_name["grey"] == 100).all()  # grey expanded to 3 equal channels
    assert (by_name["deep"] == round(40000 / 65535 * 255)).all()  # 16-bit scaled, not clipped
    assert any("resized 1 to the most common 8x8" in n for n in s.notes)
    assert any("ignored 2 non-image" in n for n in s.notes)


def test_corrupt_file_is_named_or_skipped(tmp_path):
    x, y = easy_images(3)
    root = write_folder(tmp_path / "c", x, y)
    bad = root / "class1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError) as err:
        load_splits(cfg(root, tmp_path, cache=False))
    assert "broken.png" in str(err.value) and "data.skip_bad_images=true" in str(err.value)
    s = load_splits(cfg(root, tmp_path, cache=False, skip_bad_images=True, val_fraction=0))
    assert len(s.train_y) == 12 and any("skipped 1 undecodable" in n for n in s.notes)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_decompression_bomb_is_one_clear_line_or_skipped(tmp_path, capsys):
    from cifarlab.cli import main

    x, y = easy_images(3)
    root = write_folder(tmp_path / "b", x, y)
    (root / "class2" / "bomb.png").write_bytes(_png_claiming(40000, 40000))  # 1.6 G pixels in ~60 bytes
    assert main(["train", "--data", str(root), "--data-root", str(tmp_path / "r"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bomb.png" in err and "too large to decode safely" in err
    assert "data.skip_bad_images=true" in err and "Traceback" not in err
    s = load_splits(cfg(root, tmp_path, cache=False, skip_bad_images=True, val_fraction=0))
    assert len(s.train_y) == 12


def test_unreadable_file_is_named_or_skipped(tmp_path):
    x, y = easy_images(3)
    root = write_folder(tmp_path / "u", x, y)
    os.symlink(tmp_path / "gone.png", root / "class0" / "dangling.png")  # listed, but reading it fails
    with pytest.raises(UserError) as err:
        load_splits(cfg(root, tmp_path, cache=False))
    assert "dangling.png" in str(err.value) and "data.skip_bad_images=true" in str(err.value)
    s = load_splits(cfg(root, tmp_path, cache=False, skip_bad_images=True, val_fraction=0))
    assert len(s.train_y) == 12


def test_decoding_keeps_file_order_across_chunks_and_read_threads(tmp_path):
    # more files than one worker chunk, each image carrying its own index: the threads that read the
    # files ahead of decoding must not reorder them, or images and labels would silently mismatch
    n = folder._CHUNK + 123
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:05d}.png"
        Image.fromarray(np.full((2, 2, 3), (i // 256, i % 256, 7), np.uint8)).save(p)
        paths.append(p)
    files = folder.FileList(paths, [i % 10 for i in range(n)], [str(c) for c in range(10)])
    for workers in (1, 2):
        d = folder.decode_files(files, workers=workers)
        index = d.images[:, 0, 0, 0].astype(int) * 256 + d.images[:, 0, 0, 1]
        assert index.tolist() == list(range(n)) and d.labels.tolist() == files.labels


def test_read_ahead_is_ordered_and_bounded(tmp_path, monkeypatch):
    # files are read a bounded window ahead of decoding: a chunk of big photos must not all sit in memory
    paths = [tmp_path / f"{i}.bin" for i in range(100)]
    for i, p in enumerate(paths):
        p.write_bytes(bytes([i]))
    started = []
    monkeypatch.setattr(folder, "_read_bytes", lambda p: started.append(p) or p.read_bytes())
    consumed = 0
    for i, data in enumerate(folder._read_ahead(paths)):
        assert data == bytes([i])
        consumed += 1
        assert len(started) <= consumed + 2 * folder._READ_THREADS
    assert consumed == 100


def test_empty_class_folder_and_missing_path(tmp_path):
    x, y = easy_images(2)
    root = write_folder(tmp_path / "e", x, y)
    (root / "empty").mkdir()
    with pytest.raises(UserError, match="class folder .*empty has no images"):
        load_splits(cfg(root, tmp_path))
    with pytest.raises(UserError, match="pass --data PATH to a folder of images"):
        load_splits(cfg(tmp_path / "nowhere", tmp_path))


def test_all_grey_folder_is_one_channel_or_expanded(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 10, 10, 1), dtype=np.uint8)
    root = write_folder(tmp_path / "g", x, np.arange(8) % 2)
    assert load_splits(cfg(root, tmp_path, val_fraction=0)).image_shape == (1, 10, 10)
    s3 = load_splits(cfg(root, tmp_path, val_fraction=0, channels=3))
    assert s3.image_shape == (3, 10, 10) and (s3.train_x[..., 0] == s3.train_x[..., 2]).all()


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    x, y = easy_images(4)
    root = write_folder(tmp_path / "k", x, y)
    first = load_splits(cfg(root, tmp_path, val_fraction=0))
    assert list((tmp_path / "root" / "cache").glob("*.npz"))

    def boom(*a, **k):
        raise AssertionError("decoded again although nothing changed")

    monkeypatch.setattr(folder, "decode_files", boom)
    again = load_splits(cfg(root, tmp_path, val_fraction=0))
    assert np.array_equal(first.train_x, again.train_x)
    f = next((root / "class0").iterdir())
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(f)
    os.utime(f, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_splits(cfg(root, tmp_path, val_fraction=0))  # a changed file must miss the cache


def test_eval_folder_uses_training_classes_and_shape(tmp_path):
    x, y = easy_images(3, size=20)
    root = write_folder(tmp_path / "t", x, y, names=["b", "c", "d", "e"])
    ex, ey, _ = load_folder_for_eval(root, ["a", "b", "c", "d", "e"], (3, 16, 16), cfg("x", tmp_path))
    assert ex.shape == (12, 16, 16, 3) and sorted(set(ey.tolist())) == [1, 2, 3, 4]
    with pytest.raises(UserError, match="not trained on: e"):
        load_folder_for_eval(root, ["a", "b", "c", "d"], (3, 16, 16), cfg("x", tmp_path))


# ---------------------------------------------------------------- splits and stats

def test_stratified_split_is_seeded_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    tr, va = stratified_split(labels, 0.1, seed=3)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)
    assert np.bincount(labels[va]).tolist() == [10] * 10
    tr2, va2 = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(va, va2)
    _, va3 = stratified_split(labels, 0.1, seed=4)
    assert not np.array_equal(va, va3)


def test_channel_stats_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (300, 5, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    ref = x.reshape(-1, 3) / 255.0
    assert np.allclose(mean, ref.mean(0), atol=1e-9) and np.allclose(std, ref.std(0), atol=1e-9)


# ---------------------------------------------------------------- named sets in their genuine formats

def _write_cifar10(root, n=20):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        write_cifar_batch(d / name, imgs, labels)
        batches.append((imgs, labels))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, fh, protocol=2)
    return batches


def test_cifar10_pickles(tmp_path):
    batches = _write_cifar10(tmp_path / "root")
    s = load_splits(cfg("cifar10", tmp_path))
    assert s.classes[0] == "airplane" and s.val_source == "test split"
    assert s.train_x.shape == (100, 32, 32, 3) and s.val_x.shape == (20, 32, 32, 3)
    assert np.array_equal(s.train_x[:20], batches[0][0]) and np.array_equal(s.val_y, batches[5][1])


def test_cifar100_pickles(tmp_path):
    d = tmp_path / "root" / "cifar-100-python"
    d.mkdir(parents=True)
    imgs = np.random.default_rng(1).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(d / "train", imgs, np.arange(30) % 100, label_key="fine_labels")
    write_cifar_batch(d / "test", imgs[:10], np.arange(10), label_key="fine_labels")
    with open(d / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, fh, protocol=2)
    s = load_splits(cfg("cifar100", tmp_path))
    assert len(s.classes) == 100 and np.array_equal(s.train_x, imgs) and s.train_y.tolist() == list(range(30))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    d = tmp_path / "root" / "cifar-10-batches-py"
    _write_cifar10(tmp_path / "root")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(d / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(UserError, match="not a valid CIFAR batch"):
        load_splits(cfg("cifar10", tmp_path))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name, folder_name, gz", [("mnist", "MNIST", True), ("fashion-mnist", "FashionMNIST", False)])
def test_idx_sets(tmp_path, name, folder_name, gz):
    d = tmp_path / "root" / folder_name / "raw"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    tr, te = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(d / f"train-images-idx3-ubyte{sfx}", tr)
    write_idx(d / f"train-labels-idx1-ubyte{sfx}", np.arange(40) % 10)
    write_idx(d / f"t10k-images-idx3-ubyte{sfx}", te)
    write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", np.arange(10))
    if gz:
        assert gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())[:4] == b"\x00\x00\x08\x03"
    s = load_splits(cfg(name, tmp_path))
    assert s.image_shape == (1, 28, 28) and np.array_equal(s.train_x[..., 0], tr) and s.val_y.tolist() == list(range(10))
    assert load_splits(cfg(name, tmp_path, channels=3)).image_shape == (3, 28, 28)


def test_truncated_idx_is_a_clear_error(tmp_path):
    d = tmp_path / "root" / "MNIST" / "raw"
    d.mkdir(parents=True)
    for f in named._IDX_FILES:
        write_idx(d / f, np.zeros((4, 28, 28) if "images" in f else (4,), np.uint8))
    (d / "train-images-idx3-ubyte").write_bytes((d / "train-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_splits(cfg("mnist", tmp_path))


def test_missing_named_set_offline_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        load_splits(cfg("cifar10", tmp_path))
    assert "cifar10 is not under" in str(err.value) and "pass --data PATH" in str(err.value)
    monkeypatch.delenv("CIFARLAB_OFFLINE")

    def no_network(ns, root):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(UserError) as err:
        named.load_named("mnist", tmp_path, download=no_network)
    assert "download failed" in str(err.value) and "Name or service not known" in str(err.value)
    assert "pass --data PATH" in str(err.value)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    absent = named.NamedSet(**{**named.NAMED_SETS["fashion-mnist"].__dict__,
                               "system_dirs": (str(tmp_path / "no-such-dir"),)})
    monkeypatch.setitem(named.NAMED_SETS, "fashion-mnist", absent)
    with pytest.raises(UserError) as err:
        load_splits(cfg("fashion-mnist", tmp_path))
    msg = str(err.value)
    assert msg.count("\n") == 0 and "apt-get install dataset-fashion-mnist" in msg and "no-such-dir" in msg


FASHION_SYSTEM_DIR = named.NAMED_SETS["fashion-mnist"].system_dirs[0]


@pytest.fixture
def debian_fashion_mnist():
    ns = named.NAMED_SETS["fashion-mnist"]
    if named.locate(ns, named.Path("/nonexistent")) is None:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed (no files in {FASHION_SYSTEM_DIR}; "
                    "apt-get install dataset-fashion-mnist)")
    return named.Path(FASHION_SYSTEM_DIR)


def test_real_fashion_mnist_from_the_debian_package(tmp_path, debian_fashion_mnist):
    """--data fashion-mnist finds the official files where Debian puts them: no download, nothing copied."""
    s = load_splits(cfg("fashion-mnist", tmp_path, normalize="dataset"))
    assert s.train_x.shape == (60000, 28, 28, 1) and s.val_x.shape == (10000, 28, 28, 1)
    assert s.val_source == "test split" and s.train_x.dtype == np.uint8
    assert s.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
    assert np.bincount(s.train_y).tolist() == [6000] * 10 and np.bincount(s.val_y).tolist() == [1000] * 10
    # the published statistics of the training images (torchvision tutorials use 0.2860 / 0.3530)
    assert abs(s.mean[0] - 0.2860) < 5e-4 and abs(s.std[0] - 0.3530) < 5e-4
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("*ubyte*"))


def test_a_copy_under_data_root_wins_over_the_system_package(tmp_path, debian_fashion_mnist):
    d = tmp_path / "root" / "FashionMNIST" / "raw"
    d.mkdir(parents=True)
    write_idx(d / "train-images-idx3-ubyte", np.full((20, 28, 28), 7, np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", np.arange(20) % 10)
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(10))
    s = load_splits(cfg("fashion-mnist", tmp_path))
    assert len(s.train_y) == 20 and int(s.train_x.max()) == 7


def test_misspelt_name_gets_a_hint(tmp_path):
    with pytest.raises(UserError, match="did you mean 'fashion-mnist'"):
        load_splits(cfg("Fashion_MNIST", tmp_path))


# ---------------------------------------------------------------- the real JPEGs

@pytest.mark.slow
def test_real_cifar10_jpegs(jpeg_subset, tmp_path):
    s = load_splits(cfg(jpeg_subset, tmp_path))
    assert s.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert s.train_x.shape == (450, 32, 32, 3) and np.bincount(s.val_y).tolist() == [5] * 10
    # CIFAR-10's well-known channel means, to within what 500 images allow
    assert np.allclose(s.mean, (0.491, 0.482, 0.447), atol=0.03), s.mean
    assert np.allclose(s.std, (0.247, 0.243, 0.261), atol=0.03), s.std


def test_one_grey_rule_matches_pil_to_the_bit_and_resizing_works_on_one_or_many():
    from cifarlab.data import pixels

    rgb = np.random.default_rng(4).integers(0, 256, (3, 17, 9, 3), dtype=np.uint8)
    grey = pixels.to_channels(rgb, 1)
    for a, g in zip(rgb, grey):
        assert np.array_equal(g[..., 0], np.asarray(Image.fromarray(a).convert("L")))
    assert pixels.to_channels(grey, 3).shape == (3, 17, 9, 3) and pixels.to_channels(rgb, 0) is rgb
    assert pixels.resize(rgb, 8, 4).shape == (3, 8, 4, 3) and pixels.resize(rgb[0], 8).shape == (8, 8, 3)
    want = np.asarray(Image.fromarray(rgb[1]).resize((4, 8), Image.BILINEAR))
    assert np.array_equal(pixels.resize(rgb, 8, 4)[1], want) and pixels.resize(rgb, 17, 9) is rgb


@pytest.mark.slow
def test_fast_fmnist_trains_on_a_slice_of_the_real_files(tmp_path, debian_fashion_mnist):
    """The real Fashion-MNIST images (3,000 train / 1,000 test, written back in the IDX format) through the CLI's
    fast-fmnist recipe: a short run must clearly learn (10 classes: chance is 10%)."""
    import json

    from cifarlab.cli import main

    s = load_splits(cfg("fashion-mnist", tmp_path / "system"))
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", s.train_x[:3000, ..., 0])
    write_idx(raw / "train-labels-idx1-ubyte.gz", s.train_y[:3000])
    write_idx(raw / "t10k-images-idx3-ubyte.gz", s.val_x[:1000, ..., 0])
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", s.val_y[:1000])
    run = tmp_path / "run"
    assert main(["train", "--recipe", "fast-fmnist", "--data-root", str(tmp_path / "root"), "--out", str(run),
                 "epochs=4", "--quiet", "threads=2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_train"] == 3000 and summary["num_val"] == 1000 and summary["classes"][0] == "T-shirt/top"
    assert summary["final_val_acc_tta"] > 0.70
