"""Safe extraction of .zip / .tar(.gz|.bz2|.xz) archives: `--data images.zip` and the CIFAR downloads.

Owns refusing members that would land outside the target folder (absolute paths, `..`,
links pointing out, device files) before anything is written, and extracting into a
temporary folder that is renamed into place only when complete, so an interrupted
extraction never looks finished. Never decodes images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def _unsafe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")  # C:\... on Windows-made zips


def check_members(archive: Path) -> None:
    """Raise a UserError naming the first member that would escape the target folder."""
    def refuse(member: str, why: str):
        raise UserError(f"archive {archive} is unsafe: member '{member}' {why}; refusing to extract it")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if _unsafe_name(info.filename):
                    refuse(info.filename, "points outside the target folder")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    refuse(info.filename, "is a symbolic link")
        return
    try:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if _unsafe_name(m.name):
                    refuse(m.name, "points outside the target folder")
                if m.issym() or m.islnk():
                    target = PurePosixPath(m.name).parent / m.linkname if m.issym() else PurePosixPath(m.linkname)
                    if _unsafe_name(m.linkname) or ".." in PurePosixPath(os.path.normpath(str(target))).parts:
                        refuse(m.name, f"links outside the target folder ({m.linkname})")
                if m.isdev() or m.isfifo():
                    refuse(m.name, "is a device or pipe")
    except tarfile.TarError as err:
        raise UserError(f"{archive} is not a readable zip or tar archive ({err}); check the file") from None


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract into dest (created) after checking every member; returns dest."""
    archive, dest = Path(archive), Path(dest)
    check_members(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                # members were checked above; the "data" filter (Python >= 3.12, backported) checks again
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(tmp, **kwargs)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def extracted_folder(archive: Path, root: Path) -> Path:
    """Where `--data ARCHIVE` is unpacked (once): root/extracted/<name>-<hash of path, size, mtime>."""
    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    name = archive.name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    dest = root / "extracted" / f"{name}-{key}"
    if not dest.is_dir():
        safe_extract(archive, dest)
    return _single_top_folder(dest)


def _single_top_folder(dest: Path) -> Path:
    """Archives usually wrap everything in one folder (cifar10/train/...): step into it."""
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if not p.name.startswith(".")]
        if inner and all(p.is_dir() for p in inner):
            return entries[0]
    return dest
