"""Tests of apprentice.data.augment's random erasing: the seeded form (`random_erase`) and the keyed
form (`keyed_erase`), a fixed function of each sample's (image, view) that a teacher cache can hold."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from apprentice.data import augment


def _images(n: int, side: int = 16) -> torch.Tensor:
    return torch.full((n, 1, side, side), 7, dtype=torch.uint8)


def _erased(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Pixels changed per image (the fill may equal 7 by chance at a pixel: a lower bound)."""
    return (before != after).flatten(1).sum(1)


def test_keyed_erasing_depends_on_the_key_only_not_on_the_batch():
    index, view = torch.arange(40), torch.arange(40) % 7
    once = augment.keyed_erase(_images(40), index, view, 0.5)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    again = augment.keyed_erase(_images(40), index[order], view[order], 0.5)
    assert torch.equal(again, once[order])  # the same (image, view) erased alike in any batch, any order
    single = augment.keyed_erase(_images(1), index[3:4], view[3:4], 0.5)
    assert torch.equal(single, once[3:4])
    other_view = augment.keyed_erase(_images(40), index, view + 1, 0.5)
    assert not torch.equal(other_view, once)  # another view of the same images: other rectangles


def test_keyed_erasing_follows_its_probability_and_the_papers_rectangle_sizes():
    n, side = 4000, 16
    index, view = torch.arange(n), torch.zeros(n, dtype=torch.long)
    assert torch.equal(augment.keyed_erase(_images(n, side), index, view, 0.0), _images(n, side))
    changed = _erased(_images(n, side), augment.keyed_erase(_images(n, side), index, view, 0.5))
    assert 0.45 < float((changed > 0).float().mean()) < 0.55
    every = _erased(_images(n, side), augment.keyed_erase(_images(n, side), index, view, 1.0))
    area = every.float() / side**2
    assert float((every > 0).float().mean()) > 0.99  # a fill equal to 7 everywhere is all that can hide one
    assert float(area.max()) <= augment.ERASE_AREA[1] + 0.05 and 0.1 < float(area.mean()) < 0.3


def test_keyed_uniforms_lie_in_zero_one_and_are_spread_evenly():
    keys = np.arange(20000, dtype=np.uint64)
    u = augment.keyed_uniforms(keys, 3)
    assert u.shape == (20000, 3) and u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u.ravel(), bins=10, range=(0, 1))[0]
    assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean()
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05


def test_random_erasing_is_reproducible_from_its_generator_and_off_at_zero():
    def run(seed: int, p: float) -> torch.Tensor:
        return augment.random_erase(_images(64), p, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1, 0.5), run(1, 0.5)) and not torch.equal(run(1, 0.5), run(2, 0.5))
    assert torch.equal(run(1, 0.0), _images(64))
    assert 0.3 < float((_erased(_images(64), run(3, 0.5)) > 0).float().mean()) < 0.7


def test_keyed_erasing_gives_the_bytes_it_gave_when_caches_were_built_with_it():
    """Golden bytes: a change to keyed_erase (its hash, rectangle or fill) would make every erased teacher
    cache serve logits of other images than its students see; such a change must bump the cache format."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=g)
    out = augment.keyed_erase(images, torch.arange(100, 164), torch.arange(64) % 50, 0.5)
    digest = hashlib.sha256(out.numpy().tobytes()).hexdigest()
    assert digest == "f9f2a058c726a92b696e7d677bcce23d5dc67aa430f498f80195d5d4874eb30c"
