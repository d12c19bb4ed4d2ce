"""The teacher cache beyond one teacher and every view: an ensemble's cache (the weighted mean of its
members' logits, refused to another ensemble), K views an image (a student draws only among them) and
erased views (keyed erasing: the cache holds what the student sees).
The cache itself: tests/data/test_teacher_cache.py, whose small data, teacher and live-logit helpers
these tests share."""

from __future__ import annotations

import json

import pytest
import torch

from apprentice.data import teacher_cache as tc
from apprentice.data import tensors
from apprentice.errors import ApprenticeError

from test_teacher_cache import _data, _live, _teacher

# ---------------------------------------------------------------- ensembles


def test_an_ensembles_cache_is_the_weighted_mean_of_its_members_live_logits_view_by_view(tmp_path):
    from apprentice.ensemble import Ensemble

    data, members, weights = _data(), [_teacher(1), _teacher(2), _teacher(3)], (1.0, 2.0, 1.0)
    path = tmp_path / "ensemble.cache"
    source = tc.build_teacher_cache(path, Ensemble(members, weights), data, dtype="float32", batch_size=64)
    cache = tc.open_teacher_cache(path, source)
    index, view = torch.arange(6).repeat_interleave(50), torch.arange(50).repeat(6)
    live = sum(w / 4 * _live(m, data, index, view) for w, m in zip(weights, members))
    torch.testing.assert_close(cache.lookup(index, view), live, rtol=1e-5, atol=1e-6)


def test_a_cache_of_another_ensemble_is_refused(tmp_path):
    from apprentice.ensemble import Ensemble

    data, members = _data(), [_teacher(1), _teacher(2)]
    path = tmp_path / "ensemble.cache"
    tc.build_teacher_cache(path, Ensemble(members), data, batch_size=64)
    for other in (Ensemble(members, [2.0, 1.0]), Ensemble(members[::-1]), Ensemble([members[0], _teacher(3)])):
        expected = tc.tensor_source(data, teacher=tc.teacher_hash(other))
        with pytest.raises(ApprenticeError, match="teacher"):
            tc.open_teacher_cache(path, expected)
    tc.open_teacher_cache(path, tc.tensor_source(data, teacher=tc.teacher_hash(Ensemble(members))))


# ---------------------------------------------------------------- K views an image


@pytest.fixture(scope="module")
def k_view(tmp_path_factory):
    """A float32 cache of 6 images × 4 of their 50 views, its data and teacher."""
    data, teacher = _data(), _teacher(4)
    path = tmp_path_factory.mktemp("kview") / "k.cache"
    source = tc.build_teacher_cache(path, teacher, data, views=4, seed=3, dtype="float32", batch_size=7)
    return path, data, teacher, source


def test_a_k_view_cache_holds_k_distinct_views_an_image_and_their_logits(k_view):
    path, data, teacher, source = k_view
    cache = tc.open_teacher_cache(path, tc.tensor_source(data, teacher=source.teacher, views=None))
    table = cache.view_table
    assert (cache.images, cache.views) == (6, 4) and source.views == 4 and table.shape == (6, 4)
    assert all(len(set(row.tolist())) == 4 for row in table) and int(table.max()) < 50
    assert torch.equal(table, tc.held_views(6, data.pad, data.flip, 4, seed=3))
    assert not torch.equal(table, tc.held_views(6, data.pad, data.flip, 4, seed=4))
    index = torch.arange(6).repeat_interleave(4)
    view = table.reshape(-1)
    torch.testing.assert_close(cache.lookup(index, view), _live(teacher, data, index, view), rtol=1e-5, atol=1e-6)


def test_a_k_view_cache_serves_only_the_views_it_holds(k_view):
    path, data, _, source = k_view
    cache = tc.open_teacher_cache(path, source)
    missing = next(v for v in range(50) if v not in cache.view_table[2].tolist())
    with pytest.raises(ApprenticeError, match=f"holds 4 views an image; image 2 view {missing} is not one of them"):
        cache.lookup(torch.tensor([0, 2]), torch.tensor([int(cache.view_table[0, 0]), missing]))
    with pytest.raises(ApprenticeError, match="views an image: file 4, here 50"):
        tc.open_teacher_cache(path, tc.tensor_source(data, teacher=source.teacher))  # a run that wants all 50


def _assert_cached_logits_are_the_teachers_on_every_batch(batches, teacher, *, epochs: int) -> None:
    """The student's batches over ``epochs`` carry the teacher's own logits of the very images they hold."""
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        for images, _, logits in batches:
            with torch.no_grad():
                torch.testing.assert_close(logits, teacher(images), rtol=1e-5, atol=1e-6)


def test_a_student_on_a_k_view_cache_sees_only_held_views_with_their_logits(k_view):
    path, data, teacher, source = k_view
    cache = tc.open_teacher_cache(path, source)
    loader = tensors.TensorLoader(data, batch_size=3, augment=True, seed=5, keys=True)
    _assert_cached_logits_are_the_teachers_on_every_batch(tc.CachedBatches(loader, cache), teacher, epochs=6)
    views_seen = set()
    for epoch in range(6):
        loader.set_epoch(epoch)
        for _, _, index, view in loader:
            views_seen |= {(int(i), int(v)) for i, v in zip(index, view)}
            assert all(int(v) in cache.view_table[int(i)].tolist() for i, v in zip(index, view))
    assert len(views_seen) > 6  # more than one view an image over the epochs


def test_k_of_at_least_every_view_is_the_exact_cache(tmp_path):
    data, teacher = _data(n=2, pad=1), _teacher()
    for k in (None, 18, 40):
        assert tc.build_teacher_cache(tmp_path / f"{k}.cache", teacher, data, views=k, batch_size=9).views == 18
    assert (tmp_path / "None.cache").read_bytes() == (tmp_path / "40.cache").read_bytes()
    with pytest.raises(ApprenticeError, match="views an image must be >= 1"):
        tc.build_teacher_cache(tmp_path / "0.cache", teacher, data, views=0)


# ---------------------------------------------------------------- erased views


@pytest.mark.parametrize("views", [None, 4])
def test_a_student_with_keyed_erasing_sees_exactly_the_erased_views_its_cache_holds(tmp_path, views):
    data, teacher = _data(n=8), _teacher(6)
    path = tmp_path / "erase.cache"
    source = tc.build_teacher_cache(path, teacher, data, views=views, seed=1, erase=0.5, dtype="float32",
                                    batch_size=9)
    assert source.erase == 0.5
    cache = tc.open_teacher_cache(path, tc.tensor_source(data, teacher=source.teacher, views=None, erase=0.5))
    loader = tensors.TensorLoader(data, batch_size=4, augment=True, seed=2, keys=True, erase=0.5)
    _assert_cached_logits_are_the_teachers_on_every_batch(tc.CachedBatches(loader, cache), teacher, epochs=4)
    erased = 0
    for epoch in range(4):
        loader.set_epoch(epoch)
        for images, _, index, view in loader:
            plain = tensors.normalize(tensors.apply_views(data.images[index], view, pad=data.pad, flip=data.flip),
                                      data.mean, data.std)
            erased += int((images != plain).flatten(1).any(1).sum())
    assert 0 < erased < 4 * 8  # some samples erased, not all (p = 0.5)


def test_a_cache_of_other_erasing_is_refused_in_one_line_naming_both_values(tmp_path):
    data, teacher = _data(), _teacher()
    tc.build_teacher_cache(tmp_path / "e.cache", teacher, data, views=2, erase=0.5)
    for here in (0.0, 0.25):
        expected = tc.tensor_source(data, teacher=tc.teacher_hash(teacher), views=None, erase=here)
        with pytest.raises(ApprenticeError, match=rf"random erasing \(data.erase\): file 0.5, here {here}"):
            tc.open_teacher_cache(tmp_path / "e.cache", expected)
    with pytest.raises(ApprenticeError, match=r"erase must be in \[0, 1\], got 1.5"):
        tc.build_teacher_cache(tmp_path / "bad.cache", teacher, data, erase=1.5)
    assert not (tmp_path / "bad.cache").exists()


def test_a_cache_written_before_erasing_was_recorded_reads_as_unerased():
    data = _data()
    record = json.loads(tc.tensor_source(data, teacher="0" * 64).to_json())
    del record["erase"]
    assert tc.CacheSource.from_json(json.dumps(record)).erase == 0.0
