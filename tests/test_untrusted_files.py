"""Untrusted files: a pickle payload, saved the three ways a checkpoint can be (torch zip, torch
legacy, plain pickle), goes through every command-line entry point that reads a file. None may run
it: each must answer one ``apprentice: error:`` line naming the file, exit 2, and write nothing.
The catalogue of other bad inputs is tests/bad_input_cases.py (run by tests/test_bad_inputs.py)."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from apprentice.cli import main
from apprentice.run.loop import fit

from format_writers import make_cifar10
from tiny_runs import recipe, tiny


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _save_payload(kind: str, path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": 1, "arch": {"name": "resnet8"}, "model": {"conv1.weight": Payload(marker)}}
    if kind == "torch-zip":
        torch.save(obj, path)
    elif kind == "torch-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)


ENTRY_POINTS = {  # where the payload file goes (relative to the case folder) -> the command that reads it
    "teacher-file": ("evil.pt", "train {cfg} distill.scheme=B distill.teacher={p}/evil.pt train.out={p}/out"),
    "teacher-run": ("teacher/checkpoints/best.pt", "train {cfg} distill.scheme=B distill.teacher={p}/teacher train.out={p}/out"),
    "student-init": ("init.pth", ("train {cfg} distill.scheme=C distill.teacher={run} distill.student_init={p}/init.pth "
                                  "train.out={p}/out")),
    "resume-last": ("out/checkpoints/last.pt", "train {cfg} train.out={p}/out --resume"),
    "eval-file": ("evil.pt", "eval {p}/evil.pt"),
    "eval-run": ("run/checkpoints/best.pt", "eval {p}/run"),
    "info-file": ("evil.pt", "info {p}/evil.pt"),
    "compare-file": ("evil.pt", "compare {run} {p}/evil.pt"),
    "export-file": ("evil.pt", "export {p}/evil.pt --format packed --out {p}/x.safetensors"),
    "packed-path": ("evil.safetensors", "eval {p}/evil.safetensors"),
    "teacher-safetensors": ("evil.safetensors", ("train {cfg} distill.scheme=B distill.teacher={p}/evil.safetensors "
                                                 "distill.teacher_model.name=resnet8 train.out={p}/out")),
    "cifar-batch": ("cifar/cifar-10-batches-py/data_batch_1",
                    "train {cfg} data.name=cifar10 data.limit=null data.dir={p}/cifar train.out={p}/out"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny 2W/8A run (a teacher for B/C), an unfinished copy to resume, and its recipe."""
    root = tmp_path_factory.mktemp("untrusted")
    run, partial = root / "done", root / "partial"
    fit(tiny(run, "quant.precision=2W/8A"))
    shutil.copytree(run, partial)
    (partial / "summary.json").unlink()  # stopped after its last checkpoint: a run to resume
    return {"run": run, "partial": partial, "cfg": recipe(root / "tiny.yaml", "quant.precision=2W/8A")}


def test_the_payload_is_real(tmp_path):
    _save_payload("torch-zip", tmp_path / "probe.pt", tmp_path / "ran")
    torch.load(tmp_path / "probe.pt", weights_only=False)["model"]["conv1.weight"].close()
    assert (tmp_path / "ran").exists()  # an unsafe load runs it; none of the entry points below may


@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "pickle"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_pickle_payload_is_refused_by_every_entry_point(entry, kind, runs, tmp_path, capsys):
    where, argv = ENTRY_POINTS[entry]
    marker = tmp_path / "pwned"
    if entry == "cifar-batch":
        make_cifar10(tmp_path / "cifar")
    if entry == "resume-last":
        shutil.copytree(runs["partial"], tmp_path / "out")
    _save_payload(kind, tmp_path / where, marker)
    code = main(argv.format(p=tmp_path, cfg=runs["cfg"], run=runs["run"]).split())
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("apprentice: error: "), err
    assert str(tmp_path / Path(where).parent) in lines[0]  # names the file (or its folder)
    assert re.search(r"never unpickled|refusing to load|cannot read|not a PyTorch|not a dict", lines[0]), err
    assert not marker.exists()
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "out" / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# Non-finite values in packed files: refused when read, never evaluated to NaN logits


def _damage(tensors: dict, qmap: dict, how: str) -> str:
    """Put a NaN or inf where ``how`` says; return the words the error must hold."""
    acts = qmap["layers"]["layer1.0.conv1"]["activations"]
    if how in ("nan scale", "inf scale"):
        tensors["layer1.0.conv1.weight_scale"].fill_(float(how[:3]))
        return "non-finite values (NaN or inf) in layer1.0.conv1.weight_scale"
    if how == "nan float layer":
        tensors["conv1.weight"][0, 0, 0, 0] = float("nan")
        return "non-finite values (NaN or inf) in conv1.weight"
    if how == "inf BatchNorm variance":
        tensors["bn1.running_var"][1] = float("inf")
        return "non-finite values (NaN or inf) in bn1.running_var"
    key = "step" if "step" in acts else "clip"
    acts[key] = float(how[:3])
    return f"non-finite activation {key} ({float(how[:3])}) in layer 'layer1.0.conv1'"


@pytest.mark.parametrize(("precision", "quantizer", "how"), [
    ("2W/8A", None, "nan scale"), ("4W/8A", None, "inf scale"), ("2W/8A", None, "nan float layer"),
    ("2W/32A", None, "inf BatchNorm variance"), ("2W/8A", None, "nan clip"), ("2W/8A", None, "inf clip"),
    ("4W/4A", "lsq", "nan step"), ("4W/4A", "lsq", "inf step")])
def test_a_packed_file_holding_nan_or_inf_is_refused_when_read(tmp_path, precision, quantizer, how, capsys):
    import json

    from safetensors.torch import save_file

    from apprentice.errors import ApprenticeError
    from apprentice.export import MAP_KEY, load_packed, read_packed, save_packed
    from apprentice.models import build_model
    from apprentice.quant import parse_precision, prepare

    model = build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    weights, acts = parse_precision(precision, **({"quantizer": quantizer} if quantizer else {}))
    prepare(model, weights=weights, activations=acts)
    path = tmp_path / "m.safetensors"
    save_packed(model.eval(), path)
    tensors, qmap = read_packed(path)
    words = _damage(tensors, qmap, how)
    save_file(tensors, str(path), metadata={"format": "pt", MAP_KEY: json.dumps(qmap)})
    with pytest.raises(ApprenticeError) as e:
        load_packed(path)
    assert str(e.value).startswith(f"packed model {str(path)!r} holds ") and words in str(e.value)
    assert main(["eval", str(path)]) == 2 and words in capsys.readouterr().err
