"""Tests of apprentice.data: dataset table, normalisation, holdout/limit splits, synthetic data, the
batched TensorLoader and the ImageNet folder loader. File formats: tests/data/test_datafiles.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from apprentice import data as D
from apprentice.data import folders
from apprentice.errors import ApprenticeError, lookup

from format_writers import make_idx_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APPRENTICE_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- tables and normalisation


@pytest.mark.parametrize("name", sorted(D.DATASETS))
def test_dataset_table_is_consistent(name):
    info = lookup(D.DATASETS, name, "dataset")
    assert len(info.mean) == len(info.std) == info.channels
    assert info.kind in ("idx", "cifar", "folder", "npz", "synthetic") and info.pad >= 0
    assert all(len(md5sum) == 32 for _, md5sum in info.files)
    assert info.augmentation in D.AUGMENTATIONS
    assert not info.classes or len(info.classes) == info.num_classes


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
        folders._pil()
