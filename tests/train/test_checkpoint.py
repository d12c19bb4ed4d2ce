"""Tests of apprentice.train.checkpoint: the checkpoint file, reading weights, run folders, RNG state.

Small tensors and hand-made files only; `fit` writing and resuming real checkpoints is tested in
test_train.py and test_faults.py.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.train import checkpoint as ck


def temps(folder: Path) -> set[str]:
    return {p.name for p in folder.glob(".*.tmp")}


def a_checkpoint(**changes) -> dict:
    """A checkpoint of format `ck.FORMAT` holding a tiny float model."""
    model = build_model("resnet8", num_classes=3, in_channels=1, width=0.25)
    return {"format": ck.FORMAT, "config": {}, "arch": model.arch, "plan": {}, "epoch": 1, "step": 4,
            "model": model.state_dict(), **changes}


# ---------------------------------------------------------------------------------------------
# The checkpoint file


def test_save_then_read_gives_back_every_tensor(tmp_path):
    saved = a_checkpoint()
    path = tmp_path / "last.pt"
    ck.save_checkpoint(saved, path)
    back = ck.read_checkpoint(path)
    assert back["step"] == 4 and back["arch"] == saved["arch"] and not temps(tmp_path)
    for k, v in saved["model"].items():
        torch.testing.assert_close(back["model"][k], v, rtol=0, atol=0)
    model, plan = ck.model_from_checkpoint(back, path)
    assert plan == {} and model.arch == saved["arch"]


def test_checkpoint_write_errors_name_the_file_and_keep_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(ck.torch, "save", lambda obj, f: f.write(b"x" * 10) and full())
    with pytest.raises(ck.CheckpointWriteError, match="disk quota exceeded while writing checkpoint") as e:
        ck.save_checkpoint({"step": 2}, path)
    assert e.value.exit_code == 1 and path.read_bytes() == before and not temps(tmp_path)
    with pytest.raises(ck.CheckpointWriteError, match="no earlier checkpoint exists there"):
        ck.save_checkpoint({"step": 2}, tmp_path / "new.pt")


@pytest.mark.parametrize(
    "ckpt, words",
    [
        ([1, 2], "it holds a list"),
        ({"format": ck.FORMAT, "model": {}}, "missing keys ['config', 'arch', 'plan', 'epoch', 'step']"),
        (a_checkpoint(format=ck.FORMAT + 1), f"has checkpoint format {ck.FORMAT + 1}; this version reads format"),
    ],
)
def test_check_checkpoint_names_the_file_and_what_is_wrong(ckpt, words):
    with pytest.raises(ApprenticeError, match="'run/x.pt'") as e:
        ck.check_checkpoint(ckpt, "run/x.pt")
    assert words in str(e.value)
    assert ck.check_checkpoint(a_checkpoint(), "run/x.pt")["step"] == 4


def test_model_from_checkpoint_names_a_missing_architecture_or_weights():
    for changes, words in (({"arch": None}, "has no architecture"), ({"model": None}, "has no 'model' weights"),
                           ({"plan": [1]}, "malformed quantization plan")):
        with pytest.raises(ApprenticeError, match=words):
            ck.model_from_checkpoint(a_checkpoint(**changes), "x.pt")


def test_find_checkpoint_prefers_best_then_last(tmp_path):
    with pytest.raises(ApprenticeError, match=r"has no checkpoint \(best.pt, last.pt in checkpoints/\)"):
        ck.find_checkpoint(tmp_path)
    folder = tmp_path / ck.CHECKPOINT_DIR
    folder.mkdir()
    (folder / ck.LAST).write_bytes(b"")
    assert ck.find_checkpoint(tmp_path) == folder / ck.LAST
    (folder / ck.BEST).write_bytes(b"")
    assert ck.find_checkpoint(tmp_path) == folder / ck.BEST
    assert ck.find_checkpoint(tmp_path, prefer=(ck.LAST,)) == folder / ck.LAST


# ---------------------------------------------------------------------------------------------
# Reading weights: run folder, .pt, .safetensors


def test_load_state_dict_file_reads_a_run_folder_a_pt_and_a_safetensors_file(tmp_path):
    saved = a_checkpoint()
    (tmp_path / "run" / ck.CHECKPOINT_DIR).mkdir(parents=True)
    ck.save_checkpoint(saved, tmp_path / "run" / ck.CHECKPOINT_DIR / ck.LAST)
    torch.save({"state_dict": saved["model"]}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in saved["model"].items()}, str(tmp_path / "w.safetensors"))
    for source in (tmp_path / "run", tmp_path / "run" / ck.CHECKPOINT_DIR / ck.LAST, tmp_path / "wrapped.pth",
                   tmp_path / "w.safetensors"):
        sd = ck.load_state_dict_file(source)
        assert sorted(sd) == sorted(saved["model"]), source  # safetensors stores names sorted
        for k, v in saved["model"].items():
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0)


def test_load_state_dict_file_removes_the_ddp_prefix_only_when_every_key_has_it(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"module.w": torch.ones(2)}, plain)
    assert list(ck.load_state_dict_file(plain)) == ["w"]  # DDP prefix removed
    torch.save({"module.w": torch.ones(2), "b": torch.ones(1)}, plain)
    assert list(ck.load_state_dict_file(plain)) == ["module.w", "b"]


def test_load_state_dict_file_names_a_bad_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    not_tensors = tmp_path / "numbers.pt"
    torch.save({"w": 1.0}, not_tensors)
    for path, words in ((text, "cannot read weights file"), (bad_st, "cannot read weights file"),
                        (tmp_path / "none.safetensors", "does not exist"), (not_tensors, "does not hold a state dict"),
                        (tmp_path, "has no checkpoint")):
        with pytest.raises(ApprenticeError, match=words) as e:
            ck.load_state_dict_file(path)
        assert str(path) in str(e.value)


# ---------------------------------------------------------------------------------------------
# Run folders


def test_run_files_clear_run_and_check_run_dir(tmp_path):
    run = tmp_path / "run"
    assert ck.check_run_dir(run, resume=False, overwrite=False) is None  # a new folder
    (run / ck.CHECKPOINT_DIR).mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "notes.txt", f"{ck.CHECKPOINT_DIR}/{ck.LAST}",
                 f"{ck.CHECKPOINT_DIR}/.last.pt.1.tmp", "tb/events"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    assert ck.run_files(run) == [run / ck.CHECKPOINT_DIR / ck.LAST]
    message = ck.check_run_dir(run, resume=False, overwrite=False)
    assert message is not None and "already holds checkpoints (last.pt)" in message and "--resume" in message
    assert ck.check_run_dir(run, resume=True, overwrite=False) is None
    assert ck.check_run_dir(run, resume=False, overwrite=True) is None
    (run / "summary.json").write_text("{}")
    assert "a finished run (summary.json)" in ck.check_run_dir(run, resume=False, overwrite=False)
    ck.clear_run(run)
    assert ck.run_files(run) == [] and sorted(p.name for p in run.rglob("*")) == [ck.CHECKPOINT_DIR, "notes.txt"]
    assert "is a file, not a folder" in ck.check_run_dir(run / "notes.txt", resume=False, overwrite=False)


# ---------------------------------------------------------------------------------------------
# RNG state


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # numpy caches the second gaussian: part of the state
    state = ck.rng_state()
    expected = (random.random(), np.random.normal(), torch.rand(3))
    ck.save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ck.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.normal()) == expected[:2]
    torch.testing.assert_close(torch.rand(3), expected[2], rtol=0, atol=0)
