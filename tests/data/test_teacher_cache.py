"""Tests of the teacher-output cache: exact views for tensor data (apprentice.data.teacher_cache and the
view ids of apprentice.data.tensors), its file (apprentice.data.cache_file), and sampled crops for
image folders (apprentice.data.crop_cache)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import struct

import numpy as np
import pytest
import torch
from torch import nn

from apprentice.data import cache_file, tensors
from apprentice.data import teacher_cache as tc
from apprentice.errors import ApprenticeError


def _data(n: int = 6, *, flip: bool = True, pad: int = 2):
    return dataclasses.replace(tensors.synthetic(n, image_size=8, num_classes=5), flip=flip, pad=pad)


def _teacher(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, classes)).eval()


def _live(teacher: nn.Module, data, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    x = tensors.apply_views(data.images[index], view, pad=data.pad, flip=data.flip)
    with torch.no_grad():
        return teacher.eval()(tensors.normalize(x, data.mean, data.std))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One float16 cache of 6 images × 50 views, its data and teacher."""
    data, teacher = _data(), _teacher()
    path = tmp_path_factory.mktemp("cache") / "t.safetensors"
    source = tc.build_teacher_cache(path, teacher, data, batch_size=64, chunk_images=4)
    return path, data, teacher, source


# ---------------------------------------------------------------- views


@pytest.mark.parametrize(("pad", "flip", "count"), [(2, True, 50), (4, True, 162), (2, False, 25), (0, True, 2)])
def test_view_ids_cover_every_offset_and_flip_once(pad, flip, count):
    assert tensors.view_count(pad, flip) == count
    ids = torch.arange(count)
    dy, dx, f = tensors.view_params(ids, pad=pad, flip=flip)
    assert torch.equal(tensors.view_ids(dy, dx, f, pad=pad, flip=flip), ids)
    assert len({(a, b, c) for a, b, c in zip(dy.tolist(), dx.tolist(), f.tolist())}) == count
    assert int(dy.max()) == int(dx.max()) == 2 * pad and f.any() == flip
    with pytest.raises(ApprenticeError, match=rf"view ids must lie in 0..{count - 1}"):
        tensors.view_params(torch.tensor([count]), pad=pad, flip=flip)


def _old_augment_batch(images, *, pad, flip, generator):
    """augment_batch as it was before views were reported (commit 22c9bbf), kept to prove the draws unchanged."""
    b, c, h, w = images.shape
    if pad > 0:
        dy, dx = torch.randint(2 * pad + 1, (2, b), generator=generator)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)).view(b, c, -1)
        rows = dy[:, None] + torch.arange(h)
        cols = dx[:, None] + torch.arange(w)
        flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w)
        images = padded.gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images.contiguous()


@pytest.mark.parametrize(("pad", "flip"), [(2, True), (4, True), (2, False), (0, True)])
def test_augment_batch_draws_what_it_drew_before(pad, flip):
    images = torch.randint(0, 256, (40, 3, 7, 9), dtype=torch.uint8)
    new = tensors.augment_batch(images, pad=pad, flip=flip, generator=torch.Generator().manual_seed(5))
    old = _old_augment_batch(images, pad=pad, flip=flip, generator=torch.Generator().manual_seed(5))
    assert torch.equal(new, old)


def test_a_view_is_the_shifted_and_mirrored_padded_image():
    images = torch.randint(1, 256, (1, 2, 5, 6), dtype=torch.uint8)
    padded = torch.nn.functional.pad(images[0], (2, 2, 2, 2))
    for v in range(50):
        dy, dx, f = (int(t) for t in tensors.view_params(torch.tensor([v]), pad=2, flip=True))
        crop = padded[:, dy:dy + 5, dx:dx + 6]
        expected = crop.flip(2) if f else crop
        assert torch.equal(tensors.apply_views(images, torch.tensor([v]), pad=2, flip=True)[0], expected)
    centre = tensors.center_views(1, pad=2, flip=True)
    assert torch.equal(tensors.apply_views(images, centre, pad=2, flip=True), images)


@pytest.mark.parametrize("augment", [True, False])
def test_loader_with_keys_gives_the_same_images_and_says_which(augment):
    data = _data(30)
    kwargs = {"batch_size": 7, "augment": augment, "seed": 3, "drop_last": False}
    plain, keyed = tensors.TensorLoader(data, **kwargs), tensors.TensorLoader(data, keys=True, **kwargs)
    for epoch in range(2):
        plain.set_epoch(epoch)
        keyed.set_epoch(epoch)
        for (x0, y0), batch in zip(plain, keyed, strict=True):
            assert isinstance(batch, tensors.Batch)
            assert torch.equal(x0, batch.images) and torch.equal(y0, batch.labels)
            assert torch.equal(batch.labels, data.labels[batch.index])
            rebuilt = tensors.apply_views(data.images[batch.index], batch.view, pad=2, flip=True)
            assert torch.equal(tensors.normalize(rebuilt, data.mean, data.std), batch.images)
            if not augment:
                assert torch.equal(batch.view, tensors.center_views(len(batch.view), pad=2, flip=True))
    assert plain.state_dict() == keyed.state_dict()


# ---------------------------------------------------------------- exact cache


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_lookup_equals_the_live_teacher_for_every_view(tmp_path, built, dtype):
    if dtype == "float16":
        path, data, teacher, source = built
    else:
        (_, data, teacher, _), path = built, tmp_path / "f32.safetensors"
        source = tc.build_teacher_cache(path, teacher, data, dtype="float32", batch_size=50)
    cache = tc.open_teacher_cache(path, dataclasses.replace(source, dtype=None))
    assert (cache.images, cache.views, cache.num_classes) == (6, 50, 5) and cache.source.dtype == dtype
    index, view = torch.arange(6).repeat_interleave(50), torch.arange(50).repeat(6)
    live, got = _live(teacher, data, index, view), cache.lookup(index, view)
    assert got.dtype == torch.float32 and got.shape == (300, 5)
    # float16 keeps 11 significant bits: relative error ≤ 2^-11 (plus a little for tiny values)
    tol = {"float16": (2**-11, 1e-4), "float32": (1e-5, 1e-6)}[dtype]
    torch.testing.assert_close(got, live, rtol=tol[0], atol=tol[1])
    assert not torch.equal(got[0], got[1])  # views really differ
    shuffled = torch.randperm(300)
    assert torch.equal(cache.lookup(index[shuffled], view[shuffled]), got[shuffled])


def test_the_file_is_plain_safetensors_and_its_size_is_the_logits(built):
    path, *_ = built
    from safetensors.numpy import load_file

    tensors_ = load_file(str(path))
    assert tensors_["logits"].shape == (6, 50, 5) and tensors_["logits"].dtype == np.float16
    assert tensors_["done"].all()
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert path.stat().st_size == 8 + header + 6 * 50 * 5 * 2 + len(tensors_["done"])
    assert tc.cache_size(60000, 50, 10) == 60_000_000  # Fashion-MNIST, 50 views: 60 MB in float16


_OTHER = {"mode": "sampled", "teacher": "0" * 64, "dataset": "mnist", "fingerprint": "f" * 64, "holdout": 100,
          "limit": 5, "num_classes": 7, "mean": (0.4,), "std": (0.3,), "pad": 4, "flip": False,
          "image_size": 32, "dtype": "float32", "views": 162, "topk": 3, "crop": "scale (0.08, 1.0)", "erase": 0.5}


def test_every_recorded_field_is_checked():
    assert set(_OTHER) == {f.name for f in dataclasses.fields(tc.CacheSource)}


@pytest.mark.parametrize("field", sorted(set(_OTHER) - {"mode"}))
def test_a_cache_made_from_something_else_is_refused_naming_it(built, field):
    path, _, _, source = built
    wrong = dataclasses.replace(source, **{field: _OTHER[field]})
    name = re.escape(tc._FIELD_NAMES.get(field, field))
    with pytest.raises(ApprenticeError, match=rf"was made for something else; {name}: file .*, here") as e:
        tc.open_teacher_cache(path, wrong)
    assert "\n" not in str(e.value) and str(e.value).count(": file ") == 1


def test_stale_cache_from_real_changes(built):
    path, data, teacher, source = built
    other_teacher = _teacher(seed=1)
    with pytest.raises(ApprenticeError, match=r"teacher weights \(hash\): file [0-9a-f]{12}…, here"):
        tc.open_teacher_cache(path, tc.tensor_source(data, teacher=tc.teacher_hash(other_teacher)))
    with torch.no_grad():
        teacher[1].running_mean += 1  # BatchNorm statistics are weights too
    assert tc.teacher_hash(teacher) != source.teacher
    with torch.no_grad():
        teacher[1].running_mean -= 1
    assert tc.teacher_hash(teacher) == source.teacher == tc.teacher_hash(teacher.state_dict())
    changed = data.subset(torch.arange(5))
    with pytest.raises(ApprenticeError, match=r"training images and labels \(fingerprint\).*; limit: file None, here 5"):
        tc.open_teacher_cache(path, tc.tensor_source(changed, teacher=source.teacher, limit=5))
    relabelled = dataclasses.replace(data, labels=data.labels.roll(1))
    with pytest.raises(ApprenticeError, match=r"fingerprint"):
        tc.open_teacher_cache(path, tc.tensor_source(relabelled, teacher=source.teacher))
    assert tc.open_teacher_cache(path, tc.tensor_source(data, teacher=source.teacher)).source == source
    with pytest.raises(ApprenticeError, match=r"was built in exact mode; this data set needs sampled mode"):
        tc.open_teacher_cache(path, dataclasses.replace(source, mode="sampled"))


def test_non_finite_logits_are_refused_when_building_and_when_reading(tmp_path, built):
    path, data, _, source = built

    class Bad(nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.lin, self.value = nn.Linear(64, 5), value

        def forward(self, x):
            out = self.lin(x.flatten(1))
            out[3, 1] = self.value
            return out

    with pytest.raises(ApprenticeError, match=r"the teacher gave NaN or inf for image 0 view 3"):
        tc.build_teacher_cache(tmp_path / "nan.safetensors", Bad(float("nan")), data, batch_size=100)
    with pytest.raises(ApprenticeError, match=r"\|logit\| above 65504 does not fit float16; use float32"):
        tc.build_teacher_cache(tmp_path / "big.safetensors", Bad(1e6), data, batch_size=100)
    tc.build_teacher_cache(tmp_path / "big.safetensors", Bad(1e6), data, batch_size=100, dtype="float32")
    # A file changed after it was written: one NaN in image 4
    bad = tmp_path / "tampered.safetensors"
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0] + (4 * 50 * 5 + 7) * 2
    raw[start:start + 2] = np.array([np.nan], dtype=np.float16).tobytes()
    bad.write_bytes(bytes(raw))
    with pytest.raises(ApprenticeError, match=r"non-finite values \(NaN or inf\), first at image 4"):
        tc.open_teacher_cache(bad, source)


def test_unreadable_files_get_one_line(tmp_path, built):
    path, _, _, source = built
    cases = {"missing.safetensors": None, "empty.safetensors": b"", "short.safetensors": path.read_bytes()[:-3],
             "junk.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "}
    messages = {"missing": "does not exist", "empty": "not a safetensors file", "short": "truncated or padded",
                "junk": "corrupt safetensors header"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ApprenticeError, match=messages[name.split(".")[0]]):
            tc.open_teacher_cache(tmp_path / name, source)
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ApprenticeError, match="not an apprentice teacher cache"):
        tc.open_teacher_cache(tmp_path / "other.safetensors", source)


class _Interrupt(Exception):
    pass


@contextlib.contextmanager
def _stopping(teacher: nn.Module, calls: int):
    """The teacher raises once ``calls`` forwards have run (a build killed part way); its weights, so its
    hash, stay the same. Yields the number of forwards that ran."""
    ran = [0]

    def hook(module, args):
        if ran[0] == calls:
            raise _Interrupt
        ran[0] += 1

    handle = teacher.register_forward_pre_hook(hook)
    try:
        yield ran
    finally:
        handle.remove()


def test_an_interrupted_build_resumes_and_gives_the_same_file(tmp_path, built):
    path, data, teacher, _ = built
    out, lines = tmp_path / "resumed.safetensors", []
    kwargs = {"batch_size": 64, "chunk_images": 4}  # as the fixture: 2 chunks of 200 and 100 views
    with _stopping(teacher, calls=5), pytest.raises(_Interrupt):  # chunk 0 is 4 forwards; chunk 1 stops on its 2nd
        tc.build_teacher_cache(out, teacher, data, report=lines.append, **kwargs)
    partial = cache_file.partial_path(out)
    assert not out.exists() and partial.is_file()
    assert cache_file.Layout.read(partial, "partial").entries["done"].shape == (2,)
    with _stopping(teacher, calls=10**6) as ran:
        tc.build_teacher_cache(out, teacher, data, report=lines.append, **kwargs)
    assert ran[0] == 2  # chunk 1 alone: chunk 0 was not redone
    assert out.read_bytes() == path.read_bytes() and not partial.exists()
    assert any("resuming, 1/2 chunks already done" in line for line in lines)


def test_a_partial_build_for_other_settings_starts_again(tmp_path, built):
    _, data, teacher, _ = built
    out, lines = tmp_path / "c.safetensors", []
    with _stopping(teacher, 5), pytest.raises(_Interrupt):
        tc.build_teacher_cache(out, teacher, data, batch_size=64, chunk_images=4)
    tc.build_teacher_cache(out, _teacher(seed=2), data, batch_size=64, chunk_images=4, report=lines.append)
    assert not any("resuming" in line for line in lines)
    source = tc.tensor_source(data, teacher=tc.teacher_hash(_teacher(seed=2)))
    assert tc.open_teacher_cache(out, source).source.teacher == source.teacher


def test_progress_says_size_and_work_before_it_starts_then_an_estimate(tmp_path, built):
    _, data, teacher, _ = built
    lines = []
    tc.build_teacher_cache(tmp_path / "p.safetensors", teacher, data, batch_size=64, chunk_images=1,
                           report=lines.append)
    assert lines[0].startswith(f"teacher cache {tmp_path / 'p.safetensors'}: 300 teacher forwards, file 0.0 MB")
    assert lines[1].startswith("teacher cache: about ") and "forwards/s" in lines[1]
    assert "6/6 chunks (100.0 %)" in lines[-1] and "ETA 0 min 00 s" in lines[-1]


def test_build_metadata_records_the_source(built):
    path, _, _, source = built
    meta = cache_file.Layout.read(path, "cache").metadata
    assert tc.CacheSource.from_json(meta["source"]) == source
    assert json.loads(meta["build"]) == {"batch_size": 64, "chunk_images": 4}
    assert source.views == 50 and source.topk == 5 and source.dtype == "float16"


def test_cached_batches_carry_the_teacher_logits_of_each_sample(built):
    path, data, teacher, source = built
    cache = tc.open_teacher_cache(path, source)
    loader = tensors.TensorLoader(data, batch_size=4, augment=True, seed=1, keys=True)
    batches = tc.CachedBatches(loader, cache)
    assert len(batches) == 2
    seen = 0
    for epoch in range(3):
        batches.set_epoch(epoch)
        for images, labels, logits in batches:
            with torch.no_grad():
                live = teacher(images)
            torch.testing.assert_close(logits, live, rtol=2**-11, atol=1e-4)
            seen += len(labels)
    assert seen == 18 and batches.state_dict() == {"epoch": 3, "step": 0}
    with pytest.raises(ApprenticeError, match="keys=True"):
        tc.CachedBatches(tensors.TensorLoader(data, batch_size=4), cache)
    with pytest.raises(ApprenticeError, match="the loader has 5 images × 50"):
        tc.CachedBatches(tensors.TensorLoader(data.subset(torch.arange(5)), batch_size=4, keys=True), cache)


def test_a_mapped_cache_pickles_without_its_data(built):
    import pickle

    path, _, _, source = built
    cache = tc.open_teacher_cache(path, source)
    cache.lookup(torch.tensor([0]), torch.tensor([0]))
    blob = pickle.dumps(cache)
    assert len(blob) < path.stat().st_size
    again = pickle.loads(blob)
    index, view = torch.tensor([5, 0, 2]), torch.tensor([49, 0, 17])
    assert torch.equal(again.lookup(index, view), cache.lookup(index, view))


# ---------------------------------------------------------------- training batches (apprentice.data.batches)


def test_train_batches_with_a_cache_carry_the_teacher_logits_and_resume(tmp_path):
    from apprentice.data import batches

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10)).eval()
    path = tmp_path / "syn.safetensors"
    batches.cache_teacher(str(path), teacher, "synthetic", holdout=48, limit=64, dtype="float32")
    kwargs = {"batch_size": 16, "seed": 2, "holdout": 48, "limit": 64}
    plain = batches.train_batches("synthetic", **kwargs).batches
    cached = batches.train_batches("synthetic", teacher_cache=str(path), teacher_hash=tc.teacher_hash(teacher),
                                   **kwargs).batches
    full = []
    for epoch in range(2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for (x0, y0), (x, y, t) in zip(plain, cached, strict=True):
            assert torch.equal(x0, x) and torch.equal(y0, y)
            with torch.no_grad():
                torch.testing.assert_close(t, teacher(x), rtol=1e-5, atol=1e-5)
            full.append(t)
            state = cached.state_dict()
            if len(full) == 3:
                saved = state
    resumed = batches.train_batches("synthetic", teacher_cache=str(path), teacher_hash=tc.teacher_hash(teacher),
                                    **kwargs).batches
    resumed.load_state_dict(saved)
    again = []
    for epoch in range(saved["epoch"], 2):
        resumed.set_epoch(epoch)
        again.extend(t for _, _, t in resumed)
    assert len(again) == len(full) - 3 and all(torch.equal(a, b) for a, b in zip(again, full[3:]))
    with pytest.raises(ApprenticeError, match=r"holdout: file 48, here 0.*limit: file 64, here 32"):
        batches.train_batches("synthetic", batch_size=16, seed=2, limit=32, teacher_cache=str(path),
                              teacher_hash=tc.teacher_hash(teacher))
    with pytest.raises(ApprenticeError, match="give teacher_cache and teacher_hash together"):
        batches.train_batches("synthetic", batch_size=16, seed=2, teacher_cache=str(path))


def test_ranks_read_disjoint_shares_of_the_cache(tmp_path, built):
    path, data, _, source = built
    cache = tc.open_teacher_cache(path, source)
    seen = []
    for rank in range(2):
        loader = tensors.TensorLoader(data, batch_size=3, seed=4, rank=rank, world_size=2, drop_last=True, keys=True,
                                      augment=True)
        for _, _, index, view in loader:
            seen.extend(index.tolist())
            assert cache.lookup(index, view).shape == (3, 5)
    assert sorted(seen) == list(range(6))


# ---------------------------------------------------------------- sampled crops (apprentice.data.crop_cache)


def test_dense_logits_rebuild_top_k_exactly_and_spread_the_rest():
    from apprentice.data import crop_cache as cc

    z = torch.randn(7, 9) * 3
    p = z.softmax(1)
    values, classes = z.topk(3, dim=1)
    rest = p.scatter(1, classes, 0.0).sum(1)
    q = cc.dense_logits(values, classes, rest, 9).softmax(1)
    torch.testing.assert_close(q.gather(1, classes), p.gather(1, classes))
    others = q.scatter(1, classes, float("nan"))
    torch.testing.assert_close(others.nan_to_num(0).sum(1), rest)
    assert torch.allclose(others[~others.isnan()].view(7, 6), (rest / 6)[:, None].expand(7, 6))
    torch.testing.assert_close(cc.dense_logits(*z.topk(9, dim=1), torch.zeros(7), 9).softmax(1), p)
    assert torch.isfinite(cc.dense_logits(values, classes, torch.zeros(7), 9)).all()  # no −inf for a zero rest


def _folder_teacher(classes: int = 2) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, classes)).eval()


def test_crop_cache_of_a_generated_folder(tmp_path, image_folder):
    from apprentice.data import crop_cache as cc
    from apprentice.data.folders import ImageFolder

    folder = ImageFolder(image_folder, "train", image_size=12, train=True)
    teacher, mean, std = _folder_teacher(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    path, lines = tmp_path / "crops.safetensors", []
    kwargs = {"dataset": "imagenet", "mean": mean, "std": std, "views": 3, "topk": 1, "seed": 1, "chunk_images": 5}
    source = cc.build_crop_cache(path, teacher, folder, report=lines.append, **kwargs)
    assert lines[0].endswith("36 teacher forwards, file 0.0 MB") and "3/3 chunks" in lines[-1]
    cache = cc.open_crop_cache(path, cc.folder_source(folder, teacher=tc.teacher_hash(teacher), dataset="imagenet",
                                                      mean=mean, std=std))
    assert (cache.images, cache.views, cache.topk, cache.num_classes) == (12, 3, 1, 2)
    index, slot = torch.arange(12).repeat_interleave(3), torch.arange(3).repeat(12)
    crops = torch.stack([folder.render(folder.open(i), *cache.crop(i, s)) for i, s in zip(index.tolist(), slot.tolist())])
    with torch.no_grad():
        live = teacher(tensors.normalize(crops, mean, std))
    got = cache.lookup(index, slot)
    # two classes, top-1 kept: the rest mass is the other class's probability, so the distribution is exact
    torch.testing.assert_close(got.softmax(1), live.softmax(1), rtol=1e-3, atol=1e-3)
    boxes = {cache.crop(i, s)[0] for i, s in zip(index.tolist(), slot.tolist())}
    assert len(boxes) > 30 and all(0 <= b[0] < b[2] <= 24 and 0 <= b[1] < b[3] <= 20 for b in boxes)
    assert {cache.crop(i, s)[1] for i in range(12) for s in range(3)} == {False, True}
    # the same seed gives the same file; another seed other crops
    again = tmp_path / "again.safetensors"
    cc.build_crop_cache(again, teacher, folder, **{**kwargs, "chunk_images": 12})
    assert cc.open_crop_cache(again, source).crop(4, 2) == cache.crop(4, 2)
    assert np.array_equal(np.asarray(cache._file["values"]), np.asarray(cc.open_crop_cache(again, source)._file["values"]))
    # stale: another teacher, another folder content
    with pytest.raises(ApprenticeError, match=r"teacher weights \(hash\)"):
        cc.open_crop_cache(path, dataclasses.replace(source, teacher=tc.teacher_hash(_folder_teacher(3))))
    (image_folder / "train" / "dog" / "0.png").unlink()
    with pytest.raises(ApprenticeError, match=r"fingerprint"):
        cc.open_crop_cache(path, cc.folder_source(ImageFolder(image_folder, "train", image_size=12), teacher=source.teacher,
                                                  dataset="imagenet", mean=mean, std=std))
    with pytest.raises(ApprenticeError, match=r"topk <= 2 classes"):
        cc.build_crop_cache(path, teacher, folder, **{**kwargs, "topk": 3})


def test_a_student_takes_its_crops_from_the_crop_cache(tmp_path, image_folder):
    from apprentice.data import DATASETS, batches
    from apprentice.data import crop_cache as cc
    from apprentice.data.folders import ImageFolder

    teacher = _folder_teacher()
    path = tmp_path / "crops.safetensors"
    source = batches.cache_teacher(str(path), teacher, "imagenet", data_dir=str(image_folder), image_size=12,
                                   views=2, topk=2)
    info = DATASETS["imagenet"]
    assert (source.mode, source.mean, source.views, source.topk, source.image_size) == ("sampled", info.mean, 2, 2, 12)
    assert cc.open_crop_cache(path, source).images == len(ImageFolder(image_folder, "train")) == 12
    kw = {"batch_size": 4, "seed": 0, "data_dir": str(image_folder), "image_size": 12,
          "teacher_cache": str(path), "teacher_hash": tc.teacher_hash(teacher)}
    train = batches.train_batches("imagenet", **kw)
    assert (train.num_classes, train.images, len(train.batches)) == (2, 12, 3)
    epochs = []
    for epoch in range(2):
        train.batches.set_epoch(epoch)
        batch_list = list(train.batches)
        for images, _labels, logits in batch_list:
            with torch.no_grad():  # top-2 of 2 classes: the cache's logits are the teacher's on these very crops
                torch.testing.assert_close(logits.softmax(1), teacher(images).softmax(1), rtol=2e-3, atol=2e-3)
        epochs.append(torch.cat([x for x, _, _ in batch_list]))
    sampler = train.batches.loader.sampler
    slots = {}
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for i, s in sampler:
            slots.setdefault(i, []).append(s)
    assert all(sorted(v) == [0, 1] for v in slots.values())  # two epochs use both stored crops of every image
    resumed = batches.train_batches("imagenet", **kw).batches
    resumed.load_state_dict({"epoch": 1, "step": 1})
    rest = torch.cat([x for x, _, _ in resumed])
    assert torch.equal(rest, epochs[1][4:])
