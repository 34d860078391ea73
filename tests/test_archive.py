"""Archives: `--data images.zip|.tar.gz` and the CIFAR download are extracted safely or not at all."""

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest

from cifarlab.config import DataConfig
from cifarlab.data import load_splits, named
from cifarlab.data.archive import safe_extract
from cifarlab.errors import UserError
from conftest import easy_images, write_folder


def _tar(path, members):
    """members: (name, bytes) files, or (name, None, linkname, type) links."""
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if m[1] is None:
                info.type, info.linkname = m[3], m[2]
                tf.addfile(info)
            else:
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


@pytest.mark.parametrize("members, why", [
    ([("ok.txt", b"x"), ("../evil.txt", b"owned")], "outside the target folder"),
    ([("/tmp/cifarlab-evil-abs.txt", b"owned")], "outside the target folder"),
    ([("a/../../evil.txt", b"owned")], "outside the target folder"),
    ([("link", None, "../../etc", tarfile.SYMTYPE)], "links outside"),
    ([("hard", None, "/etc/passwd", tarfile.LNKTYPE)], "links outside"),
    ([("dev", None, "", tarfile.CHRTYPE)], "device"),
])
def test_tar_members_that_escape_are_refused_before_anything_is_written(tmp_path, members, why):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "out" / "x"
    with pytest.raises(UserError, match=why):
        safe_extract(archive, dest)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not os.path.exists("/tmp/cifarlab-evil-abs.txt")
    assert not (tmp_path / "out").exists()  # refused before anything, even the destination's parent, is made


def test_zip_traversal_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/a.txt", "x")
        zf.writestr("../../evil.txt", "owned")
    with pytest.raises(UserError, match="unsafe: member '../../evil.txt'"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_a_zip_of_images_is_a_data_folder(tmp_path):
    x, y = easy_images(10, seed=1)
    src = write_folder(tmp_path / "src" / "pets", x, y)
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path / "src"))
    cfg = DataConfig(spec=str(archive), root=str(tmp_path / "root"), val_fraction=0.25)
    s = load_splits(cfg)
    assert s.classes == ["class0", "class1", "class2", "class3"] and len(s.train_y) + len(s.val_y) == 40
    direct = load_splits(DataConfig(spec=str(src), root=str(tmp_path / "root2"), val_fraction=0.25))
    assert np.array_equal(s.train_x, direct.train_x) and np.array_equal(s.val_y, direct.val_y)
    extracted = list((tmp_path / "root" / "extracted").iterdir())
    assert len(extracted) == 1
    load_splits(cfg)  # unpacked once: the second load reuses the folder
    assert list((tmp_path / "root" / "extracted").iterdir()) == extracted


def _fake_download(archive_bytes):
    def download_url(url, root, filename, md5):
        with open(os.path.join(root, filename), "wb") as fh:
            fh.write(archive_bytes)
    return download_url


def test_cifar_download_is_unpacked_by_the_safe_extractor(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    from test_data import _write_cifar10

    batches = _write_cifar10(tmp_path / "made")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp_path / "made" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.delenv("CIFARLAB_OFFLINE")
    monkeypatch.setattr(tvu, "download_url", _fake_download(buf.getvalue()))
    root = tmp_path / "root"
    root.mkdir()
    train_x, _, _, test_y, classes = named.load_named("cifar10", root)
    assert classes[0] == "airplane" and np.array_equal(train_x[:20], batches[0][0])
    assert np.array_equal(test_y, batches[5][1])
    # the same download carrying a traversal member is refused with the usual advice
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tf:
        info = tarfile.TarInfo("../../owned.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    monkeypatch.setattr(tvu, "download_url", _fake_download(evil.getvalue()))
    with pytest.raises(UserError, match="unsafe.*pass --data PATH"):
        named.load_named("cifar100", tmp_path / "root")
    assert not (tmp_path / "owned.txt").exists() and not (tmp_path.parent / "owned.txt").exists()
