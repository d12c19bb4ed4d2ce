"""Tests of apprentice.weights: safe reading (`torch_load`), strict loading (`load_strict`), `check_finite`.

What the command line says for the same files is in test_untrusted_files.py and test_bad_inputs.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.weights import check_finite, load_strict, torch_load


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------------------------------------
# torch_load


def test_torch_load_reads_tensors_and_plain_containers(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(3), "meta": [1, "two", {"x": 3.0}]}, path)
    back = torch_load(path)
    assert back["meta"] == [1, "two", {"x": 3.0}] and back["w"].tolist() == [0, 1, 2]


def test_torch_load_refuses_a_pickle_payload_naming_the_global_and_runs_none_of_it(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"w": Payload(marker)}, evil)
    torch.load(evil, weights_only=False)["w"].close()  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ApprenticeError, match=r"refers to the Python object \S*open; .*nothing in it ran") as e:
        torch_load(evil, "teacher file")
    assert str(e.value).startswith(f"cannot read teacher file {str(evil)!r}: ") and not marker.exists()


def test_torch_load_names_an_empty_a_truncated_a_missing_file_and_a_folder(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    empty, cut = tmp_path / "empty.pt", tmp_path / "cut.pt"
    empty.write_bytes(b"")
    cut.write_bytes(good.read_bytes()[:500])
    for path, words in ((empty, "the file is empty"), (cut, "the file is truncated or corrupt"),
                        (tmp_path / "none.pt", "does not exist"), (tmp_path, "is a folder, not a file")):
        with pytest.raises(ApprenticeError, match=words) as e:
            torch_load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# load_strict


def test_load_strict_loads_a_fitting_state_dict():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    load_strict(target, source.state_dict(), "w.pt")
    torch.testing.assert_close(target.weight, source.weight, rtol=0, atol=0)


def test_load_strict_names_missing_unexpected_and_wrong_shape_keys():
    model = build_model("resnet8", num_classes=3, in_channels=1, width=0.25)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["conv1.weight"] = torch.zeros(4, 3, 3, 3)
    with pytest.raises(ApprenticeError) as e:
        load_strict(model, sd, "teacher 't.pt'", into="the teacher")
    assert str(e.value) == ("teacher 't.pt' does not fit the teacher resnet8(num_classes=3, in_channels=1, width=0.25, "
                            "shortcut=A, zero_init_residual=False): missing fc.bias; unexpected extra.weight; "
                            "shape mismatch (file vs model) conv1.weight (4, 3, 3, 3) vs (4, 1, 3, 3)")


def test_load_strict_shows_the_first_three_keys_and_counts_the_rest():
    with pytest.raises(ApprenticeError, match=r"does not fit Sequential: missing 0\.weight, 0\.bias, 1\.weight \(\+1 more\)$"):
        load_strict(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), {}, "w.pt")


def test_load_strict_refuses_values_that_are_not_tensors():
    with pytest.raises(ApprenticeError, match=r"w.pt holds weights that are not tensors: weight \(float\)"):
        load_strict(nn.Linear(1, 1), {"weight": 1.0, "bias": torch.zeros(1)}, "w.pt")


# ---------------------------------------------------------------------------------------------
# check_finite


def test_check_finite_names_the_tensors_holding_nan_or_inf():
    good = {"w": torch.ones(2), "n": torch.tensor(3)}
    check_finite(good, "w.pt")
    bad = {**good, "a": torch.tensor([1.0, float("nan")]), "b": torch.tensor([float("inf")])}
    with pytest.raises(ApprenticeError, match=r"w.pt holds non-finite values \(NaN or inf\) in a, b; "):
        check_finite(bad, "w.pt")
