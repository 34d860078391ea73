"""Shared fixtures: tiny image folders written on the fly, and a slice of the real CIFAR-10 JPEGs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_JPEG = Path(os.environ.get("CIFARLAB_JPEG_DIR", REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "train"))


@pytest.fixture(scope="session")
def _extensions_dir(tmp_path_factory) -> Path:
    """One build folder for the whole session: the fused mix-conv kernel compiles once (~15 s), not per test."""
    return tmp_path_factory.mktemp("extensions")


@pytest.fixture(autouse=True)
def _offline_and_private_cache(tmp_path, monkeypatch, _extensions_dir):
    """No test may touch the network or the user's ~/.cache."""
    monkeypatch.setenv("CIFARLAB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CIFARLAB_EXTENSIONS", str(_extensions_dir))


def easy_images(n_per_class: int, size: int = 16, classes: int = 4, seed: int = 0):
    """Classes that a small CNN separates in a few epochs: a coloured quadrant per class plus noise."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40], [200, 40, 200], [40, 200, 200]])
    images, labels = [], []
    half = size // 2
    for c in range(classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size, 3))
            y0, x0 = (c // 2 % 2) * half, (c % 2) * half
            img[y0:y0 + half, x0:x0 + half] = colours[c % len(colours)] + rng.integers(-20, 20, 3)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names=None, ext: str = ".png") -> Path:
    from PIL import Image

    names = names or [f"class{c}" for c in range(int(labels.max()) + 1)]
    for i, (img, y) in enumerate(zip(images, labels)):
        d = root / names[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.squeeze()).save(d / f"{i:05d}{ext}")
    return root


@pytest.fixture
def easy_folder(tmp_path) -> Path:
    """An easy 4-class 16x16 set: train/ (80 per class) and test/ (20 per class)."""
    x, y = easy_images(80, seed=1)
    write_folder(tmp_path / "easy" / "train", x, y)
    tx, ty = easy_images(20, seed=2)
    write_folder(tmp_path / "easy" / "test", tx, ty)
    return tmp_path / "easy"


@pytest.fixture
def jpeg_subset(tmp_path) -> Path:
    """50 real CIFAR-10 training JPEGs per class copied into PATH/<class>/."""
    if not SHARED_JPEG.is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {SHARED_JPEG} (set CIFARLAB_JPEG_DIR)")
    out = tmp_path / "cifar_subset"
    for cls in sorted(p.name for p in SHARED_JPEG.iterdir() if p.is_dir()):
        (out / cls).mkdir(parents=True)
        for f in sorted((SHARED_JPEG / cls).iterdir())[:50]:
            shutil.copy(f, out / cls / f.name)
    return out


def stop_after_checkpoint(monkeypatch, n: int = 1):
    """Make the n-th write of checkpoints/last.pt raise KeyboardInterrupt right after it lands (a stop between
    epochs, as Ctrl-C at that moment would); returns a function that undoes the patch."""
    from cifarlab.runs import RunDir

    original = RunDir.save_checkpoint
    count = {"last": 0}

    def save_then_stop(self, state, name):
        path = original(self, state, name)
        if name == "last":
            count["last"] += 1
            if count["last"] == n:
                raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_stop)
    return lambda: monkeypatch.setattr(RunDir, "save_checkpoint", original)


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server of its own on a loopback port (Debian's `postgresql` package, which .ci/run
    installs), with one empty database; stopped afterwards. initdb refuses root, so as root the server
    runs as the package's `postgres` user."""
    import glob
    import os
    import pwd
    import shutil
    import socket
    import subprocess

    pytest.importorskip("psycopg", reason="pip install cifarlab[postgres] (psycopg 3, the driver SQLAlchemy picks for postgresql://) for the PostgreSQL tests")
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if not found:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    bindir = os.path.dirname(os.path.realpath(found))
    import tempfile
    from pathlib import Path

    # not under pytest's temporary root: that is private to the user running the tests, and as root the
    # server runs as another user, who must reach its own folders
    base = Path(tempfile.mkdtemp(prefix="cifarlab-postgres-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

    run(f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(base / "server.log"), "start",
        "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cifarlab_test")
        yield f"postgresql://postgres@127.0.0.1:{port}/cifarlab_test"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
