"""Decode-once cache: an image folder's uint8 arrays saved as one .npz, keyed by its files.

Owns the cache key (relative paths, sizes, mtimes and decode options) and atomic
writes. A second run on an unchanged folder loads in about a second instead of
decoding again. Never decides what to decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1  # bump when decoding changes what the arrays contain


def cache_key(root: Path, paths: list[Path], options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, **options}, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def load(cache_dir: Path, key: str) -> dict | None:
    path = cache_dir / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache = no cache; it is rebuilt from the source images


def save(cache_dir: Path, key: str, arrays: dict) -> Path | None:
    """Write atomically (temp file + rename); a read-only cache dir only costs speed.

    Not runs.atomic_write_bytes: np.savez streams ~150 MB of pixels straight to the file instead of
    building them in memory first, and a cache needs no fsync (a lost one is rebuilt)."""
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        final = cache_dir / f"{key}.npz"
        os.replace(tmp, final)
        return final
    except OSError:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)  # a full disk must not leave half a cache file behind
        return None
