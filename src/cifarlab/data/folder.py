"""Image folders: find the layout, list files, decode them once into uint8 arrays.

Owns the ImageFolder convention (label index = sorted class names), the policy for
odd files (modes converted, junk skipped, corrupt files named) and parallel decoding.
Never augments, normalises or caches (cache.py does that).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import pixels

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_CHUNK = 500  # files per worker task: big enough to amortise pickling, small enough to balance 2 cores
_READ_THREADS = 8  # file reads in flight per worker process (reads wait on the disk, not on the CPU)


@dataclass
class FileList:
    """Files of one split with their labels, plus what was passed over."""
    paths: list[Path]
    labels: list[int]
    classes: list[str]
    junk: list[Path] = field(default_factory=list)


@dataclass
class Decoded:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    notes: list[str] = field(default_factory=list)
    kept: np.ndarray | None = None  # index into the FileList of each decoded image (skipped files are absent)


def find_layout(root: Path) -> tuple[Path, Path | None]:
    """Return (train_dir, test_dir or None) for PATH/train[/test|val] or PATH/<class> layouts."""
    if not root.exists():
        raise UserError(f"data folder not found: {root}; pass --data PATH to a folder of images laid out PATH/<class>/*")
    if not root.is_dir():
        raise UserError(f"--data {root} is a file; pass a folder laid out PATH/<class>/* or PATH/train/<class>/*")
    train = root / "train"
    if train.is_dir() and _class_dirs(train):
        for name in ("test", "val"):
            if (root / name).is_dir() and _class_dirs(root / name):
                return train, root / name
        return train, None
    return root, None


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def walk_images(root: Path) -> tuple[list[Path], list[Path]]:
    """(images, junk) below root in sorted order, hidden folders skipped; junk = files that are not
    images (.DS_Store, Thumbs.db, notes.txt): not errors, but worth counting. os.walk reads file types
    from the directory, without a stat per file."""
    images, junk = [], []
    for dirpath, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        for name in sorted(files):
            p = Path(dirpath) / name
            (junk if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS else images).append(p)
    return images, junk


def list_files(split_dir: Path, classes: list[str] | None = None) -> FileList:
    """List image files under split_dir/<class>/ (recursively, sorted).

    With `classes` given (e.g. the training classes for a test folder), labels follow
    that list and a folder with an unknown class name is an error.
    """
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise UserError(f"{split_dir} has no class folders; lay images out as {split_dir}/<class>/<image>")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise UserError(f"{split_dir} has class folders the model was not trained on: {', '.join(unknown[:5])}; "
                            f"expected names among: {', '.join(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    paths, labels, junk = [], [], []
    for d in dirs:
        images, not_images = walk_images(d)
        paths += images
        labels += [index[d.name]] * len(images)
        junk += not_images
        if not images:
            raise UserError(f"class folder {d} has no images; add images or remove the folder")
    return FileList(paths, labels, list(classes), junk)


def _to_array(img, channels: int) -> tuple[np.ndarray, bool]:
    """PIL image -> (uint8 H,W,C array, was_grey). 16-bit and float images are scaled, not clipped."""
    grey = img.mode in GREY_MODES or (img.mode == "P" and _palette_is_grey(img))
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img).astype(np.float64)
        hi = 65535.0 if img.mode != "F" else max(float(arr.max()), 1.0)
        if img.mode == "I" and arr.max() <= 255:
            hi = 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]
    elif grey:
        arr = np.asarray(img.convert("L"))[..., None]
    elif img.mode == "RGB":
        arr = np.asarray(img)  # the common case: no conversion copy
    else:
        arr = np.asarray(img.convert("RGB"))  # RGBA/LA drop alpha, P/CMYK/YCbCr convert
    if channels == 1:
        arr = pixels.to_channels(arr, 1)
    return arr, grey


def _palette_is_grey(img) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _read_bytes(path: Path) -> bytes | OSError:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:  # reported with the file's name by the decoding loop, like a decode error
        return err


def _read_ahead(paths: list[Path]):
    """Each file's bytes (or its OSError) in order, read by _READ_THREADS threads at most 2 x _READ_THREADS
    files ahead: enough to hide the disk's waits, bounded so a chunk of large photos is never all in memory."""
    window = 2 * _READ_THREADS
    with ThreadPoolExecutor(_READ_THREADS) as readers:
        pending = deque(readers.submit(_read_bytes, p) for p in paths[:window])
        for p in paths[window:]:
            yield pending.popleft().result()
            pending.append(readers.submit(_read_bytes, p))
        while pending:
            yield pending.popleft().result()


def _decode_chunk(args):
    """Worker: decode a list of files; return arrays and (index, reason) for failures.

    _READ_THREADS threads read the files while this process decodes them in order: a cold read waits
    on the disk far longer than a small image takes to decode, and overlapping the waits keeps the
    core busy (docs/RESULTS.md: the decode row)."""
    paths, channels, size = args
    from PIL import Image, UnidentifiedImageError

    out, failures = [], []
    for i, data in enumerate(_read_ahead(paths)):
        try:
            if isinstance(data, OSError):
                raise data
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if size:
                    img = img.resize((size, size), Image.BILINEAR) if img.size != (size, size) else img
                out.append(_to_array(img, channels))
        except Image.DecompressionBombError as err:  # a huge canvas in a tiny file: refused before decoding
            out.append(None)
            failures.append((i, f"too large to decode safely ({err})"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            out.append(None)
            failures.append((i, f"{type(err).__name__}: {err}"))
    return out, failures


def _pool_context():
    # fork is cheapest and works from scripts without a __main__ guard; the workers only use PIL.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _decoded_chunks(paths: list[Path], channels: int, size: int, workers: int | None, background: bool = False):
    """_decode_chunk's results in file order, chunk by chunk, while the pool decodes ahead.

    background: use worker processes even when workers == 1, so the caller computes meanwhile."""
    workers = workers or min(os.cpu_count() or 1, 8)
    tasks = [(paths[i:i + _CHUNK], channels, size) for i in range(0, len(paths), _CHUNK)]
    if (workers > 1 or background) and len(tasks) > 1:
        pool = ProcessPoolExecutor(workers, mp_context=_pool_context())
        try:
            yield from pool.map(_decode_chunk, tasks)
        finally:  # a consumer that stops early (a bad file, Ctrl-C) must not wait for every queued chunk
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        yield from map(_decode_chunk, tasks)


def stream_files(paths: list[Path], channels: int, image_size: int, skip_bad: bool = False,
                 workers: int | None = None):
    """Yield (indices into paths, uint8 (n,H,W,C) images) chunk by chunk, decoded ahead in worker processes.

    For predict: the shape is fixed by the model, so work on the first chunks can start while the rest
    decode. An undecodable file raises UserError when its chunk arrives unless skip_bad."""
    for chunk_idx, (out, failures) in enumerate(_decoded_chunks(paths, channels, image_size, workers, True)):
        if failures and not skip_bad:
            i, reason = failures[0]
            raise UserError(f"cannot decode image {paths[chunk_idx * _CHUNK + i]}: {reason}; "
                            "fix or delete it, or pass --skip-bad-images")
        idx = [i for i, item in enumerate(out) if item is not None]
        if idx:
            images = np.stack([pixels.to_channels(out[i][0], channels) for i in idx])
            yield np.asarray(idx, dtype=np.int64) + chunk_idx * _CHUNK, images


def decode_files(files: FileList, channels: int = 0, image_size: int = 0, skip_bad: bool = False,
                 workers: int | None = None) -> Decoded:
    """Decode every file once into one uint8 (N,H,W,C) array.

    channels: 0 = grey if every image is grey else RGB; 1 = grey; 3 = RGB.
    image_size: 0 = keep sizes (mixed sizes are resized to the most common one, with a note).
    """
    results = list(_decoded_chunks(files.paths, channels, image_size, workers))

    arrays, keep_labels, kept, bad = [], [], [], []
    for chunk_idx, (out, failures) in enumerate(results):
        for i, reason in failures:
            bad.append((files.paths[chunk_idx * _CHUNK + i], reason))
        for i, item in enumerate(out):
            if item is not None:
                arrays.append(item)
                keep_labels.append(files.labels[chunk_idx * _CHUNK + i])
                kept.append(chunk_idx * _CHUNK + i)
    notes = []
    if bad:
        if not skip_bad:
            path, reason = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"cannot decode image {path}{more}: {reason}; fix or delete it, or pass data.skip_bad_images=true")
        notes.append(f"skipped {len(bad)} undecodable file(s), e.g. {bad[0][0]}")
    if files.junk:
        notes.append(f"ignored {len(files.junk)} non-image file(s), e.g. {files.junk[0].name}")
    if not arrays:
        raise UserError("no decodable images found; check the --data folder")

    all_grey = all(grey for _, grey in arrays)
    want = channels or (1 if all_grey else 3)
    sizes = Counter(a.shape[:2] for a, _ in arrays)
    target = sizes.most_common(1)[0][0]
    if len(sizes) > 1:
        notes.append(f"images have {len(sizes)} sizes; resized {sum(sizes.values()) - sizes[target]} to the most "
                     f"common {target[1]}x{target[0]} (set data.image_size=N to choose)")
    images = np.empty((len(arrays), target[0], target[1], want), dtype=np.uint8)
    for i, (a, _) in enumerate(arrays):
        images[i] = pixels.to_channels(pixels.resize(a, *target), want)
    return Decoded(images, np.asarray(keep_labels, dtype=np.int64), notes, np.asarray(kept, dtype=np.int64))
