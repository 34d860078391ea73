"""Readers for the on-disk formats of the torchvision sets: CIFAR pickle batches and IDX files.

Owns byte-level parsing into uint8 (N,H,W,C) arrays and int64 labels. Never downloads
and never unpickles anything but plain containers and numpy arrays (a CIFAR batch
from an unknown source cannot run code through this reader).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import UserError

# What a genuine CIFAR python batch contains: dicts, lists, bytes/str and numpy arrays.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 N,32,32,3 images, int64 labels)."""
    try:
        with open(path, "rb") as fh:
            batch = _RestrictedUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not a valid CIFAR batch ({err}); delete it so it can be fetched again") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise UserError(f"{path} is not a CIFAR batch: it lacks 'data' or '{label_key}'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: CIFAR data must be N x 3072 bytes; got shape {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if len(labels) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def read_cifar_meta(path: Path, names_key: str) -> list[str]:
    with open(path, "rb") as fh:
        meta = _RestrictedUnpickler(fh, encoding="latin1").load()
    meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, optionally gzipped) of unsigned bytes -> numpy array."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4:
        raise UserError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if body.size != expected:
        raise UserError(f"{path} holds {body.size} bytes of data but its header says {expected}; the file is truncated")
    return body.reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{images_path} and {labels_path} do not pair up: shapes {images.shape} and {labels.shape}")
    return np.ascontiguousarray(images[..., None]), labels


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (used by tests and by anyone converting data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    Path(path).write_bytes(data)


def write_cifar_batch(path: Path, images: np.ndarray, labels, label_key: str = "labels") -> None:
    """Write images (N,32,32,3 uint8) as a genuine CIFAR python batch (protocol 2, bytes keys)."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1), dtype=np.uint8)
    batch = {b"batch_label": b"cifarlab", label_key.encode(): list(map(int, labels)), b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    buf = io.BytesIO()
    pickle.dump(batch, buf, protocol=2)
    Path(path).write_bytes(buf.getvalue())
