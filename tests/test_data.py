"""Tests of apprentice.data: real file formats written here, loaded through the real code."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from apprentice import data as D
from apprentice.errors import ApprenticeError

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APPRENTICE_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array, magic: int | None = None, gz: bool = False) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def idx_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # pixel (0, 0) identifies the image
    return images, (np.arange(n) % 10).astype(np.uint8)


def make_idx_folder(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images, labels = idx_arrays(n, seed=n)
        write_idx(folder / f"{stem}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels, gz=gz)
    return folder


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python-2 strings (BINSTRING), as the real CIFAR files are."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def cifar_batch(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, num_classes, n)]


def write_pickle(path: Path, obj, py2: bool = False) -> None:
    with open(path, "wb") as f:
        (Py2Pickler(f, protocol=2) if py2 else pickle.Pickler(f, protocol=2)).dump(obj)


def make_cifar10(root: Path, n: int = 8, py2: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = cifar_batch(n, 10, i)
        write_pickle(folder / name, {b"batch_label": b"batch", b"data": images, b"labels": labels}, py2)
    write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10}, py2)
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- tables and normalisation


@pytest.mark.parametrize("name", sorted(D.DATASETS))
def test_dataset_table_is_consistent(name):
    info = D.lookup(D.DATASETS, name, "dataset")
    assert len(info.mean) == len(info.std) == info.channels
    assert info.kind in ("idx", "cifar", "folder", "synthetic") and info.pad >= 0
    assert all(len(md5sum) == 32 for _, md5sum in info.files)


def test_unknown_dataset_and_split():
    with pytest.raises(ApprenticeError, match="unknown dataset 'svhn'; choose from"):
        D.load_tensors("svhn", "train")
    with pytest.raises(ApprenticeError, match="unknown split 'val'"):
        D.load_tensors("synthetic", "val")
    with pytest.raises(ApprenticeError, match="imagenet_loader"):
        D.load_tensors("imagenet", "train")


def test_normalize_golden():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    torch.testing.assert_close(D.normalize(x, [0.2], [0.5]), torch.tensor([[[[-0.4, 0.0, 1.6]]]]))
    rgb = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    out = D.normalize(rgb, (0.0, 0.5, 1.0), (1.0, 0.5, 0.25))
    assert out.dtype == torch.float32 and out[:, :, 0, 0].tolist() == [[1.0, 1.0, 0.0]] * 2


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


# ---------------------------------------------------------------- holdout, limit, synthetic


def test_holdout_split_disjoint_and_deterministic(tmp_path):
    folder = str(make_idx_folder(tmp_path / "m"))
    ids = lambda d: d.images[:, 0, 0, 0].tolist()
    train = D.load_tensors("mnist", "train", data_dir=folder, holdout=12, seed=3)
    held = D.load_tensors("mnist", "holdout", data_dir=folder, holdout=12, seed=3)
    assert len(held) == 12 and len(train) == 38
    assert sorted(ids(train) + ids(held)) == list(range(50)) and ids(train) == sorted(ids(train))
    assert ids(held) == ids(D.load_tensors("mnist", "holdout", data_dir=folder, holdout=12, seed=3))
    assert ids(held) != ids(D.load_tensors("mnist", "holdout", data_dir=folder, holdout=12, seed=4))
    limited = D.load_tensors("mnist", "train", data_dir=folder, holdout=12, seed=3, limit=5)
    assert ids(limited) == ids(train)[:5]
    assert len(D.load_tensors("mnist", "test", data_dir=folder, holdout=12)) == 20  # test untouched
    with pytest.raises(ApprenticeError, match="needs holdout > 0"):
        D.load_tensors("mnist", "holdout", data_dir=folder)
    with pytest.raises(ApprenticeError, match="smaller than the 50"):
        D.load_tensors("mnist", "train", data_dir=folder, holdout=50)


def test_synthetic_is_deterministic_and_learnable():
    train, again = D.load_tensors("synthetic", "train"), D.synthetic(2048, seed=0)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    test = D.load_tensors("synthetic", "test")
    assert len(test) == 512 and not torch.equal(test.images[:8], train.images[:8])
    assert D.synthetic(64, channels=3, image_size=8, num_classes=4, seed=1).images.shape == (64, 3, 8, 8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = D.TensorLoader(train, batch_size=64, augment=True, drop_last=True)
    for step, (x, y) in zip(range(30), loader):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    x, y = next(iter(D.TensorLoader(test, batch_size=512, shuffle=False)))
    assert (model(x).argmax(1) == y).float().mean() > 0.5  # chance is 0.1


# ---------------------------------------------------------------- TensorLoader


def _data(n: int = 40) -> D.TensorData:
    return D.synthetic(n, image_size=8, seed=5)


def test_loader_shapes_and_normalisation():
    data = _data(10)
    loader = D.TensorLoader(data, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, (data.images[:4].float() / 255 - 0.5) / 0.25)
    assert torch.equal(y, data.labels[:4]) and loader.state_dict() == {"epoch": 1, "step": 0}
    assert len(D.TensorLoader(data, batch_size=4, drop_last=True)) == 2


def test_loader_order_reproducible_per_seed_and_epoch():
    data = _data()
    a, b = D.TensorLoader(data, batch_size=8, seed=1), D.TensorLoader(data, batch_size=8, seed=1)
    assert torch.equal(a.indices(3), b.indices(3)) and sorted(a.indices(3).tolist()) == list(range(40))
    assert not torch.equal(a.indices(0), a.indices(1))
    assert not torch.equal(a.indices(0), D.TensorLoader(data, batch_size=8, seed=2).indices(0))
    first = [y for _, y in a]
    b.set_epoch(0)
    assert all(torch.equal(u, v) for u, v in zip(first, (y for _, y in b)))
    assert torch.equal(torch.cat(first), data.labels[a.indices(0)])


@pytest.mark.parametrize("n,drop_last", [(12, True), (12, False), (10, True), (10, False)])
def test_loader_rank_shards(n, drop_last):
    data = _data(n)
    shards = [D.TensorLoader(data, batch_size=2, seed=7, rank=r, world_size=3, drop_last=drop_last).indices(4)
              for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    everything = torch.cat(shards).tolist()
    if drop_last:
        assert len(set(everything)) == len(everything) == 3 * (n // 3)  # disjoint
    else:
        assert set(everything) == set(range(n)) and len(everything) == 3 * -(-n // 3)  # covering
    with pytest.raises(ApprenticeError, match="rank 3 / world_size 3"):
        D.TensorLoader(data, batch_size=2, rank=3, world_size=3)


def test_loader_more_ranks_than_images_pads():
    shards = [D.TensorLoader(_data(2), batch_size=1, rank=r, world_size=5).indices(0) for r in range(5)]
    assert [len(s) for s in shards] == [1] * 5 and set(torch.cat(shards).tolist()) == {0, 1}


def test_loader_position_advances_and_continues():
    loader = D.TensorLoader(_data(20), batch_size=4, seed=2)
    first = [batch[1] for _, batch in zip(range(2), loader)]  # stop early: 2 of 5 batches taken
    assert loader.state_dict() == {"epoch": 0, "step": 2}
    rest = [y for _, y in loader]  # a new pass continues the same epoch
    assert torch.equal(torch.cat(first + rest), loader.data.labels[loader.indices(0)])
    assert loader.state_dict() == {"epoch": 1, "step": 0}
    loader.set_epoch(1)  # already there: no change
    assert len(list(loader)) == 5 and loader.state_dict() == {"epoch": 2, "step": 0}
    loader.set_epoch(0)
    assert loader.state_dict() == {"epoch": 0, "step": 0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda_matches_cpu():
    data = _data(64)
    cpu = D.TensorLoader(data, batch_size=16, augment=True, seed=4)
    gpu = D.TensorLoader(data, batch_size=16, augment=True, seed=4, device="cuda")
    for (x0, y0), (x1, y1) in zip(cpu, gpu):
        assert x1.is_cuda and torch.equal(y0, y1.cpu())
        torch.testing.assert_close(x0, x1.cpu())


def test_loader_resume_is_bit_identical():
    data = _data(30)
    kwargs = {"batch_size": 4, "augment": True, "seed": 11, "drop_last": False}
    full, states = D.TensorLoader(data, **kwargs), []
    reference = []
    for epoch in range(2):
        full.set_epoch(epoch)
        for x, y in full:
            reference.append((x, y))
            states.append(full.state_dict())
    k = 5
    assert states[k - 1] == {"epoch": 0, "step": k}
    resumed = D.TensorLoader(data, **kwargs)
    resumed.load_state_dict(states[k - 1])  # as if the run stopped after its k-th batch
    replay = []
    for epoch in range(resumed.state_dict()["epoch"], 2):
        resumed.set_epoch(epoch)
        replay.extend(resumed)
    assert len(replay) == len(reference) - k
    for (x0, y0), (x1, y1) in zip(reference[k:], replay):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    with pytest.raises(ApprenticeError, match=r"step 9: need epoch >= 0 and step in 0..8"):
        resumed.load_state_dict({"epoch": 0, "step": 9})


def test_augmentation_changes_images_keeps_labels():
    data = _data(64)
    plain = D.TensorLoader(data, batch_size=64, seed=3)
    aug = D.TensorLoader(data, batch_size=64, seed=3, augment=True)
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(aug))
    assert torch.equal(y0, y1) and not torch.equal(x0, x1)
    assert (x0 != x1).flatten(1).any(1).float().mean() > 0.5


def test_augment_batch_is_a_padded_crop_and_flip():
    images = torch.randint(1, 256, (16, 2, 5, 6), dtype=torch.uint8)
    out = D.augment_batch(images, pad=2, flip=True, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = set()
    for i in range(16):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (padded[i].flip(2) if f else padded[i])[:, dy:dy + 5, dx:dx + 6])]
        assert matches, f"image {i} is not a shifted/flipped copy"
        flips.update(f for _, _, f in matches)
    assert flips == {False, True}
    again = D.augment_batch(images, pad=2, flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


# ---------------------------------------------------------------- ImageNet folders


def _image_folder(root: Path) -> Path:
    Image = pytest.importorskip("PIL.Image")  # Pillow is an optional extra

    colours = {"n02_b": (200, 10, 10), "n01_a": (10, 200, 10)}
    for split in ("train", "val"):
        for k, (cls, colour) in enumerate(colours.items()):
            folder = root / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), colour).save(folder / "x1.png")
            Image.new("RGB", (30, 50), colour).save(folder / "x2.JPEG", quality=95)
            Image.new("L", (24, 24), 128).save(folder / f"x3_{k}.png")
            (folder / "notes.txt").write_text("not an image")
    return root


def test_image_folder_transforms(tmp_path):
    root = _image_folder(tmp_path / "imagenet")
    train = D.ImageFolder(root, "train", image_size=16, resize=20)
    val = D.ImageFolder(root, "val", image_size=16, resize=20)
    assert train.classes == ["n01_a", "n02_b"] and len(train) == 6 and train.train and not val.train
    assert [label for _, label in train.samples] == [0, 0, 0, 1, 1, 1]
    for i in range(len(train)):
        x, label = train[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and label == train.samples[i][1]
    x, label = val[0]  # n01_a/x1.png, solid green, lossless
    assert label == 0 and x.shape == (3, 16, 16) and x[:, 8, 8].tolist() == [10, 200, 10]
    with pytest.raises(ApprenticeError, match="not found"):
        D.ImageFolder(root, "test")


def test_imagenet_loader_shards(tmp_path):
    root = _image_folder(tmp_path / "imagenet")
    seen = []
    for rank in range(2):
        loader = D.imagenet_loader(root, "val", batch_size=2, workers=0, shuffle=True, seed=0, rank=rank,
                                   world_size=2, image_size=16)
        loader.sampler.set_epoch(1)
        batches = list(loader)
        assert batches[0][0].shape == (2, 3, 16, 16) and batches[0][0].dtype == torch.uint8
        seen += list(loader.sampler)
    assert sorted(seen) == list(range(6))
    train = D.imagenet_loader(root, "train", batch_size=4, workers=0, shuffle=True, seed=0, image_size=16)
    x, _ = next(iter(train))
    assert D.normalize(x, D.DATASETS["imagenet"].mean, D.DATASETS["imagenet"].std).shape == (4, 3, 16, 16)


def test_missing_pillow_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ApprenticeError, match="pip install pillow"):
        D._pil()


# ---------------------------------------------------------------- the real Fashion-MNIST files


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = D.load_tensors("fashion_mnist", "train", download=False)
    test = D.load_tensors("fashion_mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    mean = train.images.float().mean().item() / 255
    assert abs(mean - train.mean[0]) < 1e-3
