"""Tests of your own images as data: image folders (apprentice.data.images, folders, folder_cache),
their resolved facts (apprentice.data.spec), augmentation by name (apprentice.data.augment),
normalisation (apprentice.data.normalise) and .npz arrays (apprentice.data.arrays).
Training, predict and the command line on folders: tests/cli/test_predict.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from apprentice import data as D
from apprentice.data import batches, folder_cache
from apprentice.data.folders import ImageFolder
from apprentice.data.images import natural_key
from apprentice.errors import ApprenticeError

from format_writers import write_image_folder

pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APPRENTICE_CACHE", str(tmp_path / "cache"))


def _spec(root: Path, **settings) -> D.DataSpec:
    return D.resolve_spec("folder", str(root), **settings)


# ---------------------------------------------------------------- classes


def test_natural_key_orders_digit_runs_by_value():
    names = ["class10", "class2", "Class1", "b", "a10", "a9", "10", "2", "1"]
    assert sorted(names, key=natural_key) == ["1", "2", "10", "a9", "a10", "b", "Class1", "class2", "class10"]
    assert sorted(["n02", "n01"], key=natural_key) == ["n01", "n02"]  # ImageNet's ids keep their order


def test_folder_classes_are_sorted_naturally_and_label_every_split_alike(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("10", "2", "1"), counts=(("train", 2), ("val", 1)))
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are never classes
    spec = _spec(root)
    assert spec.preprocess.classes == ("1", "2", "10")
    for split in ("train", "val"):
        folder = ImageFolder(root, split, classes=spec.preprocess.classes)
        assert [(p.parent.name, label) for p, label in folder.samples[::len(folder) // 3]] == [
            ("1", 0), ("2", 1), ("10", 2)]


@pytest.mark.parametrize("change, words", [
    (lambda r: os.rename(r / "val" / "b", r / "val" / "B"), ["val/", "missing 'b'", "extra 'B'"]),
    (lambda r: (r / "val" / "c").mkdir(), ["val/", "extra 'c'"]),
    (lambda r: (r / "test" / "a").mkdir(parents=True), ["test/", "missing 'b'"]),
])
def test_splits_with_other_classes_are_refused_naming_the_class(tmp_path, change, words):
    root = write_image_folder(tmp_path / "f", counts=(("train", 2), ("val", 1)))
    change(root)
    with pytest.raises(ApprenticeError) as e:
        _spec(root)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_given_classes_fix_the_order_and_must_match_the_folders(tmp_path):
    root = write_image_folder(tmp_path / "f", counts=(("train", 2), ("val", 1)))
    assert _spec(root, classes=("b", "a")).preprocess.classes == ("b", "a")
    assert ImageFolder(root, "val", classes=("b", "a")).samples[0][0].parent.name == "b"
    with pytest.raises(ApprenticeError, match="missing 'c'"):
        _spec(root, classes=("a", "b", "c"))


def test_empty_class_folder_and_folder_without_images(tmp_path):
    root = write_image_folder(tmp_path / "f", counts=(("train", 2), ("val", 1)))
    for p in (root / "val" / "b").iterdir():
        p.unlink()
    with pytest.raises(ApprenticeError, match="'b' of .* hold no images"):
        ImageFolder(root, "val")
    with pytest.raises(ApprenticeError, match="data folder .*nowhere' .data.dir. does not exist; arrange it as"):
        _spec(tmp_path / "nowhere")
    shutil.copytree(root / "train", tmp_path / "no-val" / "train")
    with pytest.raises(ApprenticeError, match="image folder .*no-val/val' not found"):
        _spec(tmp_path / "no-val")


# ---------------------------------------------------------------- channels, size, normalisation


@pytest.mark.parametrize("channels", [1, 3])
def test_folders_of_grey_and_rgb_images(tmp_path, channels):
    root = write_image_folder(tmp_path / "f", channels=channels, size=(20, 16))
    spec = _spec(root)
    pre = spec.preprocess
    assert (pre.channels, pre.image_size, pre.resize, spec.tensor_cache) == (channels, 16, 16, True)
    train = D.load_split(spec, "train")
    assert train.images.shape == (16, channels, 16, 16) and train.labels.tolist() == [0] * 8 + [1] * 8
    assert len(pre.mean) == len(pre.std) == channels
    other = 3 if channels == 1 else 1  # converted on decoding: grey to RGB repeats, RGB to grey mixes
    converted = D.load_split(_spec(root, channels=other), "val").images
    assert converted.shape == (8, other, 16, 16)
    if other == 3:
        assert torch.equal(converted[:, 0], converted[:, 2])


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    root = write_image_folder(tmp_path / "f", size=(20, 16))
    spec = _spec(root, image_size=8)
    assert D.load_split(spec, "val").images.shape[1:] == (1, 8, 8)
    rrc = _spec(root, image_size=8, augmentation="random-resized-crop")
    assert (rrc.preprocess.resize, rrc.tensor_cache) == (9, False)  # 8 / 0.875: the ImageNet recipe's crop


def test_computed_normalisation_is_that_of_every_training_pixel(tmp_path):
    root = write_image_folder(tmp_path / "f", channels=3)
    spec = _spec(root)
    x = D.load_split(spec, "train").images.double() / 255
    assert spec.preprocess.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-4)
    assert spec.preprocess.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), abs=1e-4)
    streamed = _spec(root, tensor_cache=False)  # a sample of decoded images (here all of them)
    assert streamed.preprocess.mean == spec.preprocess.mean and not streamed.tensor_cache
    assert _spec(root, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).preprocess.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ApprenticeError, match="data.mean has 1 values but the images have 3"):
        _spec(root, mean=(0.5,), std=(0.2,))
    assert D.channel_stats(torch.full((2, 1, 3, 3), 7, dtype=torch.uint8)) == ((0.0275,), (1.0,))  # flat: std 1


# ---------------------------------------------------------------- augmentation by name


def _shifted_or_flipped(out: torch.Tensor, view: torch.Tensor, pad: int) -> bool:
    padded = torch.nn.functional.pad(view, (pad, pad, pad, pad))
    h, w = view.shape[1:]
    return any(torch.equal(out, (padded.flip(2) if f else padded)[:, dy:dy + h, dx:dx + w])
               for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (False, True))


@pytest.mark.parametrize("name", sorted(D.AUGMENTATIONS))
def test_each_augmentation_of_a_streamed_folder(tmp_path, name):
    root = write_image_folder(tmp_path / "f", size=(20, 16))
    spec = _spec(root, augmentation=name, tensor_cache=False, pad=2)
    folder = ImageFolder(root, "train", image_size=12, resize=D.eval_resize(name, 12), train=True, channels=1,
                         augmentation=spec.augmentation, pad=spec.pad, flip=spec.flip)
    torch.manual_seed(0)
    outs = [folder[i][0] for i in range(len(folder))]
    views = [folder.view(folder.open(i)) for i in range(len(folder))]
    assert all(o.shape == (1, 12, 12) and o.dtype == torch.uint8 for o in outs)
    same = [torch.equal(o, v) for o, v in zip(outs, views)]
    if name == "none":
        assert all(same)
    elif name == "pad-crop-flip":
        assert all(_shifted_or_flipped(o, v, 2) for o, v in zip(outs, views)) and not all(same)
    else:
        assert not any(same)  # a random crop of the full image, resized: never exactly the centre view


@pytest.mark.parametrize("name", ["none", "pad-crop-flip"])
def test_augmentation_of_a_cached_folder_runs_on_tensors(tmp_path, name):
    root = write_image_folder(tmp_path / "f")
    spec = _spec(root, augmentation=name, flip=False, mean=(0.0,), std=(1 / 255,))  # batches hold raw pixel values
    train = batches.train_batches("folder", batch_size=16, seed=0, spec=spec)
    x, _ = next(iter(train.batches))
    base = D.load_split(spec, "train").images
    assert spec.pad == 2  # image_size 16 // 8
    for image in x.round().to(torch.uint8):
        assert any(_shifted_or_flipped(image, v, spec.pad) for v in base)  # a crop of a padded training image
    shifted = sum(not any(torch.equal(i, v) for v in base) for i in x.round().to(torch.uint8))
    assert (shifted == 0) == (name == "none")


def test_augmentation_off_and_choices_that_cannot_work(tmp_path):
    root = write_image_folder(tmp_path / "f")
    assert _spec(root, augmentation="random-resized-crop", augment=False).augmentation == "none"
    with pytest.raises(ApprenticeError, match="data.tensor_cache=true: 'random-resized-crop' crops the original"):
        _spec(root, augmentation="random-resized-crop", tensor_cache=True)
    with pytest.raises(ApprenticeError, match="needs image files; synthetic is held as tensors"):
        D.resolve_spec("synthetic", augmentation="random-resized-crop")
    with pytest.raises(ApprenticeError, match="unknown augmentation 'cutout'"):
        D.resolve_spec("synthetic", augmentation="cutout")


def test_tensor_data_sets_take_the_settings_too():
    spec = D.resolve_spec("synthetic", mean=(0.4,), std=(0.3,), flip=True, pad=1)
    train = D.load_split(spec, "train", limit=8)
    assert (train.mean, train.std, train.pad, train.flip) == ((0.4,), (0.3,), 1, True)
    assert D.resolve_spec("fashion_mnist").preprocess.classes[0] == "T-shirt/top"
    assert D.resolve_spec("synthetic").preprocess.classes == tuple(str(i) for i in range(10))


# ---------------------------------------------------------------- the tensor cache


def test_the_tensor_cache_is_written_once_and_rebuilt_when_the_folder_changes(tmp_path):
    root = write_image_folder(tmp_path / "f")
    lines: list[str] = []
    spec = _spec(root, report=lines.append)
    cache = root / ".apprentice" / "train-1x16-r16.safetensors"
    assert cache.is_file() and "beside the data" in lines[0] and str(cache) in lines[0]
    lines.clear()
    assert torch.equal(D.load_split(spec, "train").images, D.load_split(_spec(root, report=lines.append), "train").images)
    assert lines == []  # read back, not decoded again
    from PIL import Image

    Image.new("L", (20, 16), 255).save(root / "train" / "a" / "new.png")  # an added image
    assert len(D.load_split(spec, "train", report=lines.append)) == 17 and "folder changed" in lines[0]
    lines.clear()
    path = root / "train" / "a" / "new.png"
    Image.new("L", (20, 16), 0).save(path)  # the same file rewritten (same size: only its time tells)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    images = D.load_split(spec, "train", report=lines.append).images
    assert "folder changed" in lines[0] and int(images[8].max()) == 0


def test_decoding_a_folder_leaves_the_global_random_state_alone(tmp_path):
    # A run that decodes its folder must initialise its model as a run that finds the cache does.
    root = write_image_folder(tmp_path / "f")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    lines: list[str] = []
    D.load_split(_spec(root, report=lines.append), "train")
    assert "beside the data" in lines[0]  # it did decode
    assert torch.equal(torch.get_rng_state(), before)


def test_the_tensor_cache_of_a_read_only_folder_goes_to_the_cache_folder(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "f")
    monkeypatch.setattr(folder_cache.os, "access", lambda path, mode: False)  # root ignores permission bits
    lines: list[str] = []
    _spec(root, report=lines.append)
    assert "in the cache folder (the data folder is read-only)" in lines[0]
    assert list((tmp_path / "cache" / "folders").rglob("train-1x16-r16.safetensors"))


def test_a_damaged_tensor_cache_is_decoded_again(tmp_path):
    root = write_image_folder(tmp_path / "f")
    spec = _spec(root)
    cache = root / ".apprentice" / "train-1x16-r16.safetensors"
    expected = D.load_split(spec, "train").images
    cache.write_bytes(cache.read_bytes()[:100])
    assert torch.equal(D.load_split(spec, "train").images, expected)


# ---------------------------------------------------------------- unreadable images


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_image_is_named_before_anything_is_cached(tmp_path, damage):
    root = write_image_folder(tmp_path / "f")
    bad = root / "train" / "b" / "3.png"
    bad.write_bytes(b"not an image" if damage == "garbage" else bad.read_bytes()[:60])
    with pytest.raises(ApprenticeError, match=f"cannot read image '{bad}'"):
        _spec(root)
    assert not list((root / ".apprentice").glob("*.safetensors"))


def test_an_unreadable_image_in_a_worker_process_is_one_line(tmp_path):
    root = write_image_folder(tmp_path / "f")
    spec = _spec(root, tensor_cache=False, mean=(0.5,), std=(0.25,))
    (root / "train" / "b" / "3.png").write_bytes(b"GIF89a broken")
    train = batches.train_batches("folder", batch_size=4, seed=0, workers=1, spec=spec)
    with pytest.raises(ApprenticeError) as e:
        list(train.batches)
    assert str(e.value).startswith("cannot read image") and "3.png" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- .npz arrays


def _npz(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{split}.npz", images=images, labels=labels, **extra)


@pytest.mark.parametrize("shape", [(12, 10, 10), (12, 3, 10, 10)])
def test_npz_arrays_train_and_test(tmp_path, shape):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, shape, dtype=np.uint8), np.arange(12) % 3
    _npz(tmp_path / "a", "train", images, labels, classes=np.array(["cat", "dog", "owl"]))
    _npz(tmp_path / "a", "val", images[:6], labels[:6])
    spec = D.resolve_spec("npz", str(tmp_path / "a"))
    channels = 1 if len(shape) == 3 else 3
    pre = spec.preprocess
    assert (pre.channels, pre.image_size, pre.classes, spec.pad) == (channels, 10, ("cat", "dog", "owl"), 1)
    assert pre.mean == pytest.approx((images.reshape(12, channels, -1) / 255).mean((0, 2)).tolist(), abs=1e-4)
    train = D.load_split(spec, "train", holdout=2, seed=0)
    assert len(train) == 10 and train.images.shape[1:] == (channels, 10, 10)
    test = batches.eval_batches("npz", "test", batch_size=4, spec=spec)  # test.npz is missing: val.npz
    assert sum(len(y) for _, y in test) == 6
    with pytest.raises(ApprenticeError, match=f"data.channels={4 - channels} but train.npz holds images of channels"):
        D.resolve_spec("npz", str(tmp_path / "a"), channels=4 - channels)


@pytest.mark.parametrize("arrays, words", [
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4, int)}, "look like N×H×W×C"),
    ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(4, int)}, "must be uint8"),
    ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros(3, int)}, "'labels' must be 4 integers"),
    ({"images": np.zeros((4, 8, 8), np.uint8)}, "has no array 'labels'"),
    ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.array([0, 1, 2, 3]), "classes": np.array(["a", "b"])},
     "label 3 but only 2 classes"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.zeros(2, int), "classes": np.array([{}], dtype=object)},
     "cannot read"),
])
def test_bad_npz_files_are_named(tmp_path, arrays, words):
    folder = tmp_path / "bad"
    folder.mkdir()
    np.savez(folder / "train.npz", **arrays)
    with pytest.raises(ApprenticeError, match=words):
        D.resolve_spec("npz", str(folder))


def test_the_exact_teacher_cache_serves_a_folder_decoded_into_tensors(tmp_path):
    from apprentice.models import build_model

    root = write_image_folder(tmp_path / "f")
    spec = _spec(root)
    teacher = build_model("resnet8", num_classes=2, in_channels=1, width=0.25).eval()
    path = tmp_path / "teacher.cache"
    source = batches.cache_teacher(str(path), teacher, "folder", spec=spec, batch_size=64)
    assert (source.mode, source.views, source.mean) == ("exact", D.view_count(2, True), spec.preprocess.mean)
    train = batches.train_batches("folder", batch_size=8, seed=0, spec=spec, teacher_cache=str(path),
                                  teacher_hash=D.teacher_hash(teacher))
    x, _, cached = next(iter(train.batches))
    with torch.no_grad():
        torch.testing.assert_close(cached, teacher(x), atol=5e-3, rtol=5e-3)  # float16 storage


def test_a_streamed_folder_caches_teachers_only_for_random_resized_crops(tmp_path):
    from apprentice.models import build_model

    root = write_image_folder(tmp_path / "f")
    spec = _spec(root, tensor_cache=False)  # pad-crop-flip, streamed
    teacher = build_model("resnet8", num_classes=2, in_channels=1, width=0.25).eval()
    with pytest.raises(ApprenticeError, match="stores random-resized crops, but data.augmentation is 'pad-crop-flip'"):
        batches.cache_teacher(str(tmp_path / "t.cache"), teacher, "folder", spec=spec)
    assert not (tmp_path / "t.cache").exists()
