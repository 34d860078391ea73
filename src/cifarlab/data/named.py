"""The named sets: cifar10, cifar100, fashion-mnist, mnist in torchvision's on-disk layout.

Owns where each set's files live under --data-root, the one download attempt
(through torchvision) and the one-line error when the files are missing offline.
Never parses bytes itself (readers.py does).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from . import readers


@dataclass(frozen=True)
class NamedSet:
    name: str
    folder: str  # under root, as torchvision lays it out
    required: tuple[str, ...]  # files that must exist (a .gz variant also counts for IDX)
    tv_class: str  # torchvision.datasets class that can download it
    read: Callable[[Path], tuple]  # folder -> (train_x, train_y, test_x, test_y, classes)
    # folders where a system package installs the same files (e.g. Debian's dataset-fashion-mnist),
    # looked at after --data-root so a user's own copy wins and nothing is downloaded or copied
    system_dirs: tuple[str, ...] = ()
    package_hint: str = ""  # how to get the files without a network, for the missing-set error
    # (training images, classes, height, width, channels) as the files hold them: what auto.py's rules read
    # without opening the files
    shape: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    mirror_safe: bool = True  # False where a mirrored image is another class (a flipped 2 is no 2)


def _read_cifar10(d: Path):
    parts = [readers.read_cifar_batch(d / f"data_batch_{i}", "labels") for i in range(1, 6)]
    test_x, test_y = readers.read_cifar_batch(d / "test_batch", "labels")
    classes = readers.read_cifar_meta(d / "batches.meta", "label_names")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y, classes)


def _read_cifar100(d: Path):
    train_x, train_y = readers.read_cifar_batch(d / "train", "fine_labels")
    test_x, test_y = readers.read_cifar_batch(d / "test", "fine_labels")
    classes = readers.read_cifar_meta(d / "meta", "fine_label_names")
    return train_x, train_y, test_x, test_y, classes


def _idx_reader(classes: list[str]):
    def read(d: Path):
        def f(name):
            return d / name if (d / name).exists() else d / f"{name}.gz"
        train_x, train_y = readers.read_idx_pair(f("train-images-idx3-ubyte"), f("train-labels-idx1-ubyte"))
        test_x, test_y = readers.read_idx_pair(f("t10k-images-idx3-ubyte"), f("t10k-labels-idx1-ubyte"))
        return train_x, train_y, test_x, test_y, list(classes)
    return read


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

NAMED_SETS = {
    "cifar10": NamedSet("cifar10", "cifar-10-batches-py",
                        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"), "CIFAR10", _read_cifar10,
                        shape=(50_000, 10, 32, 32, 3)),
    "cifar100": NamedSet("cifar100", "cifar-100-python", ("train", "test", "meta"), "CIFAR100", _read_cifar100,
                         shape=(50_000, 100, 32, 32, 3)),
    "mnist": NamedSet("mnist", "MNIST/raw", _IDX_FILES, "MNIST", _idx_reader(MNIST_CLASSES), shape=(60_000, 10, 28, 28, 1),
                      mirror_safe=False),
    "fashion-mnist": NamedSet("fashion-mnist", "FashionMNIST/raw", _IDX_FILES, "FashionMNIST", _idx_reader(FASHION_CLASSES),
                              system_dirs=("/usr/share/datasets/fashion-mnist",),
                              package_hint="on Debian/Ubuntu: apt-get install dataset-fashion-mnist",
                              shape=(60_000, 10, 28, 28, 1)),
}


def _complete(d: Path, ns: NamedSet) -> bool:
    return all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in ns.required)


def _present(ns: NamedSet, root: Path) -> bool:
    return _complete(root / ns.folder, ns)


def locate(ns: NamedSet, root: Path) -> Path | None:
    """The folder holding the set's files: under root first, then the system package's folders."""
    for d in (root / ns.folder, *map(Path, ns.system_dirs)):
        if _complete(d, ns):
            return d
    return None


def _download(ns: NamedSet, root: Path) -> None:
    """Fetch the set with torchvision's downloader (it checks MD5s). CIFAR's tar.gz is unpacked by our
    safe extractor (no member may land outside root); MNIST's .gz files need no extraction."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, ns.tv_class)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # a closed network must not hang a run
    try:
        if hasattr(cls, "tgz_md5"):  # CIFAR10 / CIFAR100
            import shutil

            from torchvision.datasets.utils import download_url

            from .archive import safe_extract

            download_url(cls.url, str(root), cls.filename, cls.tgz_md5)
            staging = safe_extract(root / cls.filename, root / f".extract-{ns.name}")
            target = root / ns.folder
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / ns.folder, target)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)


def load_named(name: str, root: Path, download: Callable[[NamedSet, Path], None] = _download):
    """Return (train_x, train_y, test_x, test_y, classes) for a named set, downloading once if allowed."""
    ns = NAMED_SETS[name]
    found = locate(ns, root)
    if found is not None:
        return ns.read(found)
    missing = f"{name} is not under {root / ns.folder}" + "".join(f" nor {d}" for d in ns.system_dirs)
    fix = (f"{ns.package_hint}, " if ns.package_hint else "") + \
        f"put torchvision's {name} files under --data-root, or pass --data PATH to a folder of images"
    if os.environ.get("CIFARLAB_OFFLINE"):
        raise UserError(f"{missing} and CIFARLAB_OFFLINE is set; {fix}")
    try:
        download(ns, root)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise UserError(f"{missing} and the download failed ({reason}); {fix}") from None
    if not _present(ns, root):
        raise UserError(f"{missing} even after a download; {fix}")
    return ns.read(root / ns.folder)
