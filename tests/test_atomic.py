"""Tests of apprentice.atomic: all-or-nothing writes with ordinary permissions, and their leftovers."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

from apprentice.atomic import (
    atomic_copy,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
)
from apprentice.config import load_config
from apprentice.run.loop import fit
from apprentice.train import checkpoint as ck


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    yield set_
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_the_usual_permissions(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_copy(tmp_path / "a.txt", tmp_path / "b.txt")
    ck.save_checkpoint({"w": torch.ones(2)}, tmp_path / "c.pt")
    for name in ("a.txt", "b.txt", "c.pt"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask):
    path = tmp_path / "summary.json"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640


def test_a_run_folder_is_readable_by_others(tmp_path, umask):
    out = tmp_path / "run"
    fit(load_config(None, ["model.name=resnet8", "model.width=0.25", "data.name=synthetic", "data.download=false",
                           "data.limit=64", "data.batch_size=32", "train.epochs=1", "train.device=cpu",
                           f"train.out={out}"]))
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert mode(out / name) == 0o644, name


def test_an_error_inside_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(ZeroDivisionError), atomic_file(path) as f:
        f.write(b"new, half")
        1 / 0  # noqa: B018
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_a_write_error_is_kept_even_when_the_writer_replaces_it(tmp_path):
    """torch.save turns a failed write into RuntimeError('unexpected pos'); the disk's error wins."""
    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    path = tmp_path / "x.pt"
    with pytest.raises(OSError) as e, atomic_file(path) as f:
        f._f = Full(f._f)
        torch.save({"w": torch.zeros(1000)}, f)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_remove_stale_temps_only_removes_ours(tmp_path):
    for name in (".last.pt.abc.tmp", ".config.yaml.x1.tmp", "notes.tmp", "last.pt", ".hidden"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.tmp").mkdir()
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".config.yaml.x1.tmp", ".last.pt.abc.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".dir.tmp", ".hidden", "last.pt", "notes.tmp"]
    assert remove_stale_temps(tmp_path / "missing") == []
