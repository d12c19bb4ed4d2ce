"""Tests of apprentice.data.files: the IDX and CIFAR formats written here in their real on-disk form,
found, downloaded, verified and unpacked through the real code (file:// mirrors stand in for the web)."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from apprentice import data as D
from apprentice.errors import ApprenticeError

from format_writers import (
    cifar_batch,
    idx_arrays,
    make_cifar10,
    make_idx_folder,
    md5,
    write_idx,
    write_pickle,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APPRENTICE_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loads_gzip_and_raw(tmp_path, gz):
    folder = make_idx_folder(tmp_path / "mnist", gz=gz)
    train = D.load_tensors("mnist", "train", data_dir=str(folder), download=False)
    test = D.load_tensors("mnist", "test", data_dir=str(folder), download=False)
    images, labels = idx_arrays(50, seed=50)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(images))
    assert torch.equal(train.labels, torch.from_numpy(labels).long()) and train.labels.dtype == torch.int64
    assert len(test) == 20 and train.name == "mnist" and (train.pad, train.flip) == (2, False)


def _break_idx(folder: Path, problem: str) -> Path:
    images, labels = idx_arrays(50, seed=50)
    img, lab = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if problem == "magic":
        return write_idx(img, images, magic=2049)
    if problem == "truncated":
        path = write_idx(img, images)
        path.write_bytes(path.read_bytes()[:-10])
        return path
    if problem == "too long":
        path = write_idx(img, images)
        path.write_bytes(path.read_bytes() + b"\0")
        return path
    if problem == "labels but":
        return write_idx(lab, labels[:-1])
    if problem == "label values":
        labels[3] = 10
        return write_idx(lab, labels)
    if problem == "27×27":
        return write_idx(img, images[:, :27, :27])
    if problem == "cannot read":  # a cut-off gzip stream
        path = write_idx(img, images, gz=True)
        path.write_bytes(path.read_bytes()[:200])
        return path
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["magic", "truncated", "too long", "labels but", "label values",
                                     "27×27", "cannot read"])
def test_idx_validation_names_file(tmp_path, problem):
    folder = make_idx_folder(tmp_path / "m", gz=False)
    bad = _break_idx(folder, problem)
    if bad.suffix == ".gz":
        (folder / "train-images-idx3-ubyte").unlink()
    with pytest.raises(ApprenticeError, match=problem) as err:
        D.load_tensors("mnist", "train", data_dir=str(folder), download=False)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_missing_data_lists_places_and_apt_hint(tmp_path, monkeypatch):
    info = dataclasses.replace(D.DATASETS["fashion_mnist"], system_dir=str(tmp_path / "debian"))
    monkeypatch.setitem(D.DATASETS, "fashion_mnist", info)
    with pytest.raises(ApprenticeError) as err:
        D.load_tensors("fashion_mnist", "train", data_dir=str(tmp_path / "mine"), download=False)
    msg = str(err.value)
    for place in (tmp_path / "mine", tmp_path / "debian", tmp_path / "cache" / "fashion_mnist"):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "train-images-idx3-ubyte" in msg


def _mirror(tmp_path: Path, monkeypatch, *, corrupt: bool, good_second: bool = False) -> Path:
    """A file:// mirror of the four MNIST files; ``corrupt`` makes its checksums not match."""
    mirror = make_idx_folder(tmp_path / "mirror", gz=True)
    files = tuple((p.name, md5(p)) for p in sorted(mirror.iterdir()))
    if corrupt:
        for p in mirror.iterdir():
            p.write_bytes(p.read_bytes() + b"x")
    mirrors = (mirror.as_uri() + "/",)
    if good_second:
        good = make_idx_folder(tmp_path / "good", gz=True)
        mirrors += (good.as_uri() + "/",)
    info = dataclasses.replace(D.DATASETS["mnist"], mirrors=mirrors, files=files, system_dir=None)
    monkeypatch.setitem(D.DATASETS, "mnist", info)
    return tmp_path / "cache" / "mnist"


def test_download_verifies_and_caches(tmp_path, monkeypatch, capsys):
    cache = _mirror(tmp_path, monkeypatch, corrupt=True, good_second=True)
    data = D.load_tensors("mnist", "test")  # first mirror fails its checksum, the second serves
    assert len(data) == 20 and "downloading file://" in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == sorted(n for n, _ in D.DATASETS["mnist"].files)


def test_download_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    cache = _mirror(tmp_path, monkeypatch, corrupt=True)
    with pytest.raises(ApprenticeError, match="checksum mismatch: expected md5"):
        D.load_tensors("mnist", "train")
    assert list(cache.iterdir()) == []  # no partial or unverified file left behind


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("py2", [False, True])
def test_cifar10_pickles_load(tmp_path, py2):
    make_cifar10(tmp_path, py2=py2)
    train = D.load_tensors("cifar10", "train", data_dir=str(tmp_path), download=False)
    test = D.load_tensors("cifar10", "test", data_dir=str(tmp_path / "cifar-10-batches-py"), download=False)
    assert train.images.shape == (40, 3, 32, 32) and len(test) == 8
    images, labels = cifar_batch(8, 10, 1)  # data_batch_2: channel-major R, G, B planes of 32×32
    assert torch.equal(train.images[8:16], torch.from_numpy(images).view(8, 3, 32, 32))
    assert train.labels[8:16].tolist() == labels and (train.pad, train.flip) == (4, True)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 12), ("test", 5)):
        images, labels = cifar_batch(n, 100, n)
        write_pickle(folder / name, {b"data": images, b"fine_labels": labels, b"coarse_labels": [0] * n})
    data = D.load_tensors("cifar100", "train", data_dir=str(tmp_path), download=False)
    assert data.images.shape == (12, 3, 32, 32) and data.labels.tolist() == cifar_batch(12, 100, 12)[1]
    assert data.num_classes == 100


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", [os.system, eval])
def test_malicious_cifar_pickle_is_refused(tmp_path, call):
    marker = tmp_path / "pwned"
    folder = make_cifar10(tmp_path)
    arg = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"
    write_pickle(folder / "test_batch", {b"data": _Evil(call, arg), b"labels": [0]})
    refused = r"refusing to load .*(system|eval) from .*test_batch: not a plain CIFAR batch"
    with pytest.raises(ApprenticeError, match=refused):
        D.load_tensors("cifar10", "test", data_dir=str(tmp_path), download=False)
    assert not marker.exists()


@pytest.mark.parametrize("content,problem", [
    ([1, 2, 3], "is not a dict"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must be 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label values"),
])
def test_cifar_batch_validation(tmp_path, content, problem):
    folder = make_cifar10(tmp_path)
    write_pickle(folder / "test_batch", content)
    with pytest.raises(ApprenticeError, match=problem) as err:
        D.load_tensors("cifar10", "test", data_dir=str(tmp_path), download=False)
    assert "test_batch" in str(err.value)


def _cifar_mirror(tmp_path: Path, monkeypatch, members: dict[str, bytes]) -> None:
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(payload)
            tar.addfile(entry, io.BytesIO(payload))
    info = dataclasses.replace(D.DATASETS["cifar10"], mirrors=(archive.parent.as_uri() + "/",),
                               files=((archive.name, md5(archive)),))
    monkeypatch.setitem(D.DATASETS, "cifar10", info)


def test_cifar_download_and_extract(tmp_path, monkeypatch):
    src = make_cifar10(tmp_path / "src")
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in src.iterdir()}
    _cifar_mirror(tmp_path, monkeypatch, members)
    data = D.load_tensors("cifar10", "test")
    assert data.images.shape == (8, 3, 32, 32)
    assert sorted(p.name for p in (tmp_path / "cache" / "cifar10").iterdir()) == ["cifar-10-batches-py"]


@pytest.mark.parametrize("bad", ["../escape.txt", "cifar-10-batches-py/../../escape.txt",
                                 "/tmp/apprentice-escape.txt"])
def test_cifar_archive_escaping_paths_refused(tmp_path, monkeypatch, bad):
    _cifar_mirror(tmp_path, monkeypatch, {"cifar-10-batches-py/test_batch": b"x", bad: b"evil"})
    with pytest.raises(ApprenticeError, match="refusing to extract"):
        D.load_tensors("cifar10", "test")
    assert not (tmp_path / "cache" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/apprentice-escape.txt").exists()
    assert not (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py").exists()


def test_cifar_archive_links_refused(tmp_path, monkeypatch):
    _cifar_mirror(tmp_path, monkeypatch, {"cifar-10-batches-py/test_batch": b"x"})
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    info = dataclasses.replace(D.DATASETS["cifar10"], files=((archive.name, md5(archive)),))
    monkeypatch.setitem(D.DATASETS, "cifar10", info)
    with pytest.raises(ApprenticeError, match="refusing to extract 'cifar-10-batches-py/test_batch'"):
        D.load_tensors("cifar10", "test")


def test_corrupt_cifar_file(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(garbage")
    with pytest.raises(ApprenticeError, match="cannot read CIFAR batch .*test_batch"):
        D.load_tensors("cifar10", "test", data_dir=str(tmp_path), download=False)


# ---------------------------------------------------------------- the real Fashion-MNIST files


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = D.load_tensors("fashion_mnist", "train", download=False)
    test = D.load_tensors("fashion_mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    mean = train.images.float().mean().item() / 255
    assert abs(mean - train.mean[0]) < 1e-3
