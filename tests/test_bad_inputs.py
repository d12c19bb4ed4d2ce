"""The bad-input catalogue: every case goes through the real command line and must end with one line
``apprentice: error: ...`` naming the problem, a non-zero exit status, no traceback, and no change
to any file of the runs already on disk.

`CASES` is the one table. The fixture trains one tiny finished run (synthetic data, resnet8 at width
0.25, four steps) and copies it as an unfinished one, hashes every file of both, and builds the
broken files (data, teachers, checkpoints, packed models). Training cases name the finished run
as ``train.out`` with ``--overwrite``, so they also show that a bad input fails before anything of
an existing run is cleared. Every case runs in-process through
``apprentice.cli.main``; the cases marked ``sub`` also run as real ``python -m apprentice``
processes, so that "no traceback" is checked on real stderr. ``docs/bad-inputs.md`` lists every case
with the message users see; regenerate it with

    APPRENTICE_BAD_INPUTS_DOC=docs/bad-inputs.md .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_bad_inputs.py
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from apprentice.cli import main
from apprentice.config import dump_yaml, load_config
from apprentice.loop import fit
from apprentice.models import build_model

import tiny_runs
from format_writers import make_cifar10, make_idx_folder, write_idx, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"
TINY = [*tiny_runs.TINY, "quant.precision=2W/8A"]


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` (placeholders filled from the fixture's paths), what the user did,
    words the error line must contain, the exit status, whether it also runs as a subprocess, and
    whether argparse answers it (its usage text, then the one error line)."""

    id: str
    what: str
    argv: str
    words: tuple[str, ...]
    code: int = 2
    sub: bool = False
    usage: bool = False


T = "train {cfg}"
# Train cases point at the finished run with --overwrite: a bad input must fail before anything of it is cleared.
NEW = "train.out={run} --overwrite"
TEACHER_B = "distill.scheme=B distill.teacher={f}"
AS_R8 = "distill.teacher_model.name=resnet8 distill.teacher_model.width=0.25"
FM = "data.name=fashion_mnist data.limit=null data.dir={d}"
CIFAR = "data.name=cifar10 data.limit=null data.batch_size=16 data.dir={d}"
FOLDER = "data.name=folder data.limit=null data.batch_size=4 data.workers=0 data.dir={d}"

CASES = [
    # ---- the recipe and its overrides
    Case("yaml-malformed", "recipe with broken YAML syntax", "train {f}/broken.yaml", ("broken.yaml:2", "invalid YAML"), sub=True),
    Case("yaml-not-a-mapping", "recipe that is a YAML list", "train {f}/list.yaml", ("expected a mapping of sections",)),
    Case("yaml-duplicate-key", "recipe with a key written twice", "train {f}/dup.yaml", ("duplicate key 'lr'",)),
    Case("yaml-python-tag", "recipe with a !!python/object tag", "train {f}/tag.yaml",
         ("tag.yaml:1", "YAML tag !!python/object/apply:os.system is not allowed"), sub=True),
    Case("yaml-binary", "a checkpoint given as the recipe", "train {run}/checkpoints/last.pt", ("not UTF-8 text",)),
    Case("recipe-missing", "recipe file that does not exist", "train {f}/nope.yaml",
         ("cannot read config file", "No such file or directory")),
    Case("unknown-key-file", "unknown key in the recipe", "train {f}/unknown.yaml", ("unknown key 'optim.lrr'", "allowed:")),
    Case("unknown-key-override", "unknown key on the command line", f"{T} model.nmae=resnet8 {NEW}",
         ("unknown key 'model.nmae'", "allowed: name"), sub=True),
    Case("bad-override", "override without a value", f"{T} optim.lr {NEW}", ("bad override 'optim.lr'",)),
    Case("wrong-type-float", "text where a number belongs", f"{T} optim.lr=fast {NEW}", ("optim.lr: expected a float, got 'fast'",)),
    Case("wrong-type-int", "fraction where an integer belongs", f"{T} train.epochs=2.5 {NEW}",
         ("train.epochs: expected an integer, got 2.5",)),
    Case("wrong-type-section", "value where a section belongs", f"{T} optim=0.1 {NEW}", ("optim", "expected a mapping")),
    Case("epochs-zero", "train.epochs=0", f"{T} train.epochs=0 {NEW}", ("train.epochs: must be > 0, got 0",), sub=True),
    Case("epochs-negative", "train.epochs=-3", f"{T} train.epochs=-3 {NEW}", ("train.epochs: must be > 0, got -3",)),
    Case("batch-size-zero", "data.batch_size=0", f"{T} data.batch_size=0 {NEW}", ("data.batch_size: must be > 0",)),
    Case("batch-size-negative", "data.batch_size=-8", f"{T} data.batch_size=-8 {NEW}", ("data.batch_size: must be > 0",)),
    Case("lr-negative", "optim.lr=-0.1", f"{T} optim.lr=-0.1 {NEW}", ("optim.lr: must be > 0, got -0.1",)),
    Case("lr-zero", "optim.lr=0", f"{T} optim.lr=0 {NEW}", ("optim.lr: must be > 0, got 0.0",)),
    Case("lr-nan", "optim.lr=.nan", f"{T} optim.lr=.nan {NEW}", ("optim.lr: must be > 0, got nan",)),
    Case("bits-too-many", "9-bit weights", f"{T} quant.precision=9W/8A {NEW}", ("weight bits", "2..8 or 32", "got 9")),
    Case("bits-too-few", "1-bit weights", f"{T} quant.precision=1W/32A {NEW}", ("weight bits", "got 1")),
    Case("bits-activations-zero", "0-bit activations", f"{T} quant.precision=4W/0A {NEW}", ("activation bits", "got 0")),
    Case("precision-garbled", "precision not in the WxA notation", f"{T} quant.precision=four {NEW}",
         ("precision 'four' is not like '2W/32A'",)),
    Case("unknown-model", "model.name=resnet7", f"{T} model.name=resnet7 {NEW}", ("unknown model 'resnet7'", "resnet20")),
    Case("unknown-quantizer", "quant.quantizer=binary", f"{T} quant.quantizer=binary {NEW}",
         ("unknown weight quantizer 'binary'", "ternary")),
    Case("unknown-scheme", "distill.scheme=D", f"{T} distill.scheme=D {NEW}", ("unknown scheme 'D'", "'B'")),
    Case("unknown-dataset", "data.name=cifar11", f"{T} data.name=cifar11 {NEW}", ("unknown data set 'cifar11'",)),
    Case("unknown-device", "train.device=tpu", f"{T} train.device=tpu {NEW}", ("unknown device 'tpu'",)),
    Case("scheme-b-without-teacher", "scheme B, no distill.teacher", f"{T} distill.scheme=B {NEW}",
         ("distill.teacher", "scheme 'B' needs a trained teacher"), sub=True),
    Case("scheme-c-without-teacher", "scheme C, no distill.teacher", f"{T} distill.scheme=C {NEW}",
         ("scheme 'C' needs a trained teacher",)),
    Case("scheme-c-without-init", "scheme C, no distill.student_init", f"{T} distill.scheme=C distill.teacher={{run}} {NEW}",
         ("distill.student_init", "scheme 'C' starts from trained FP weights")),
    Case("scheme-a-without-architecture", "scheme A, no distill.teacher_model", f"{T} distill.scheme=A {NEW}",
         ("distill.teacher_model", "needs the teacher architecture")),
    Case("image-size-too-small", "ImageNet crop smaller than the network's stride",
         f"{T} data.name=imagenet data.limit=null data.dir={{d}} model.name=resnet18 data.image_size=16 {NEW}",
         ("data.image_size", "16 px is smaller than the total stride", "32")),
    Case("batch-larger-than-data", "data.batch_size above the training images", f"{T} data.limit=10 {NEW}",
         ("data.batch_size=32 is larger than the 10 training images",)),
    # ---- teachers and student initialisations
    Case("teacher-missing", "distill.teacher file that does not exist", f"{T} {TEACHER_B}/nope.pt {NEW}",
         ("distill.teacher", "nope.pt", "does not exist"), sub=True),
    Case("teacher-truncated", "teacher checkpoint cut short", f"{T} {TEACHER_B}/truncated.pt {NEW}",
         ("truncated.pt", "truncated or corrupt")),
    Case("teacher-empty", "empty teacher file", f"{T} {TEACHER_B}/empty.pt {NEW}", ("empty.pt", "the file is empty")),
    Case("teacher-not-pytorch", "a text file as the teacher", f"{T} {TEACHER_B}/notes.pt {NEW}",
         ("notes.pt", "not a PyTorch")),
    Case("teacher-other-architecture", "resnet14 weights declared as resnet8", f"{T} {TEACHER_B}/resnet14.pt {AS_R8} {NEW}",
         ("resnet14.pt", "does not fit resnet8", "unexpected")),
    Case("teacher-other-classes", "teacher trained for 100 classes", f"{T} {TEACHER_B}/classes100.pt {AS_R8} {NEW}",
         ("classes100.pt", "predicts 100 classes", "has 10")),
    Case("teacher-other-channels", "teacher for RGB images, data is grey", f"{T} {TEACHER_B}/rgb.pt {AS_R8} {NEW}",
         ("rgb.pt", "shape mismatch", "conv1.weight")),
    Case("teacher-nan-weights", "teacher checkpoint holding NaN weights", f"{T} {TEACHER_B}/nan.pt {NEW}",
         ("nan.pt", "non-finite values", "conv1.weight")),
    Case("teacher-plain-without-architecture", "plain state dict, no distill.teacher_model",
         f"{T} {TEACHER_B}/resnet14.pt {NEW}", ("plain weights file", "distill.teacher_model")),
    Case("teacher-run-other-architecture", "teacher run folder whose model differs from teacher_model",
         f"{T} distill.scheme=B distill.teacher={{run}} distill.teacher_model.name=resnet14 {NEW}",
         ("does not match teacher run", "name='resnet14' (run has 'resnet8')")),
    Case("student-init-other-architecture", "scheme C init from resnet14 weights",
         f"{T} distill.scheme=C distill.teacher={{run}} distill.student_init={{f}}/resnet14.pt {NEW}",
         ("distill.student_init", "resnet14.pt", "does not fit the student")),
    Case("student-init-missing", "scheme C init file that does not exist",
         f"{T} distill.scheme=C distill.teacher={{run}} distill.student_init={{f}}/nope.pt {NEW}",
         ("distill.student_init", "nope.pt", "does not exist")),
    # ---- data files
    Case("data-folder-missing", "data.dir that does not exist", f"{T} {FM}/nope {NEW}",
         ("data folder", "nope", "does not exist"), sub=True),
    Case("idx-truncated", "Fashion-MNIST image file cut short", f"{T} {FM}/idx-truncated {NEW}",
         ("train-images-idx3-ubyte", "truncated")),
    Case("idx-bad-magic", "Fashion-MNIST file with a wrong magic number", f"{T} {FM}/idx-magic {NEW}",
         ("has magic number 2052; expected 2051",)),
    Case("idx-labels-out-of-range", "Fashion-MNIST label 12 of 10 classes", f"{T} {FM}/idx-labels {NEW}",
         ("train-labels-idx1-ubyte", "label values 0..12; allowed 0..9")),
    Case("idx-count-mismatch", "fewer labels than images", f"{T} {FM}/idx-count {NEW}", ("has 60 labels but", "64 images")),
    Case("cifar-truncated", "CIFAR batch cut short", f"{T} {CIFAR}/cifar-truncated {NEW}",
         ("data_batch_1", "pickle data was truncated")),
    Case("cifar-bad-magic", "CIFAR batch that is not a pickle", f"{T} {CIFAR}/cifar-magic {NEW}",
         ("cannot read CIFAR batch", "data_batch_1")),
    Case("cifar-labels-out-of-range", "CIFAR-10 label 10", f"{T} {CIFAR}/cifar-labels {NEW}",
         ("data_batch_1", "label values 0..10; allowed 0..9")),
    Case("folder-classes-differ", "image folder whose val/ lacks a class of train/", f"{T} {FOLDER}/folder-classes {NEW}",
         ("val/", "does not have the classes of train/", "missing 'dog'"), sub=True),
    Case("folder-corrupt-image", "image folder holding a file that is not an image", f"{T} {FOLDER}/folder-corrupt {NEW}",
         ("cannot read image", "dog/1.png")),
    Case("npz-images-channels-last", "npz images stored N×H×W×C", f"{T} data.name=npz data.limit=null data.dir={{d}}/npz {NEW}",
         ("look like N×H×W×C", "N×C×H×W")),
    Case("augmentation-unknown", "data.augmentation=cutout", f"{T} data.augmentation=cutout {NEW}",
         ("data.augmentation: unknown augmentation 'cutout'", "pad-crop-flip")),
    Case("channels-of-a-fixed-data-set", "data.channels for a data set that fixes them", f"{T} data.channels=3 {NEW}",
         ("data.channels", "only your own images")),
    # ---- run folders
    Case("finished-run", "train.out holds a finished run", "train {cfg} train.out={run}",
         ("already holds a finished run", "--resume", "--overwrite"), sub=True),
    Case("resume-finished-run", "--resume of a finished run", "train {cfg} train.out={run} --resume",
         ("holds a finished run", "nothing to resume")),
    Case("resume-changed-config", "--resume with other settings", "train {cfg} train.out={partial} --resume optim.lr=0.01 train.epochs=3",
         ("cannot resume", "optim.lr: 0.05 -> 0.01", "train.epochs: 1 -> 3"), sub=True),
    Case("resume-damaged-checkpoint", "--resume of a last.pt without optimizer state",
         "train {cfg} train.out={f}/damaged-run --resume", ("cannot be resumed (missing 'optimizer')", "--overwrite")),
    Case("resume-and-overwrite", "--resume and --overwrite together", "train {cfg} train.out={partial} --resume --overwrite",
         ("give resume or overwrite, not both",)),
    Case("out-is-a-file", "train.out names a file", "train {cfg} train.out={run}/summary.json", ("is a file, not a folder",)),
    Case("out-uncreatable", "train.out inside a file", "train {cfg} train.out={cfg}/run",
         ("cannot create the run folder", "train.out", "Not a directory")),
    # ---- eval, info, export, compare
    Case("eval-missing", "eval of a path that does not exist", "eval {f}/nope", ("does not exist",)),
    Case("eval-truncated-checkpoint", "eval of a truncated checkpoint", "eval {f}/truncated.pt", ("truncated or corrupt",)),
    Case("eval-plain-state-dict", "eval of a bare state dict", "eval {f}/resnet14.pt", ("is not an apprentice checkpoint",)),
    Case("eval-no-checkpoint", "eval of a run folder without checkpoints", "eval {f}/empty-run", ("has no checkpoint",)),
    Case("eval-holdout-without-holdout", "--split holdout of a run with no holdout", "eval {run} --split holdout",
         ("held out no training images",)),
    Case("eval-unknown-device", "--device tpu", "eval {run} --device tpu", ("--device: unknown device 'tpu'", "cpu, cuda")),
    Case("eval-absent-gpu", "--device cuda:99", "eval {run} --device cuda:99", ("--device cuda:99",)),
    Case("eval-bad-batch-size", "--batch-size 0", "eval {run} --batch-size 0", ("--batch-size: must be > 0",), usage=True),
    Case("checkpoint-not-tensors", "checkpoint whose weights are not tensors", "eval {f}/not-tensors.pt",
         ("not-tensors.pt", "holds weights that are not tensors: conv1.weight (int)")),
    Case("checkpoint-bad-plan", "checkpoint with a garbled quantization plan", "info {f}/bad-plan.pt",
         ("bad-plan.pt", "malformed layer plan 'x'")),
    Case("info-not-pytorch", "info of a text file", "info {f}/notes.pt", ("notes.pt", "not a PyTorch")),
    Case("compare-one-missing", "compare with one missing run", "compare {run} {f}/nope", ("nope", "does not exist")),
    Case("export-no-checkpoint", "export of a run without a checkpoint", "export {f}/empty-run --format packed --out {new}",
         ("has no checkpoint",), sub=True),
    Case("export-over-checkpoint", "--out is the run's own checkpoint",
         "export {run} --format packed --out {run}/checkpoints/last.pt", ("would overwrite the run being exported",)),
    Case("export-over-other-file", "--out is an existing non-export file", "export {run} --format packed --out {cfg}",
         ("already exists and is not an earlier packed export",)),
    Case("export-to-folder", "--out is a folder", "export {run} --format packed --out {f}", ("is a folder; give a file name",)),
    Case("export-to-missing-folder", "--out in a folder that does not exist", "export {run} --format packed --out {f}/no/x.safetensors",
         ("folder", "does not exist")),
    Case("export-packed-again", "export of a packed file", "export {f}/good.safetensors --format packed --out {new}",
         ("already a packed file",)),
    Case("packed-shape-mismatch", "packed map: weight shape differs from the tensors", "eval {f}/map-shape.safetensors",
         ("packed model", "map says weight shape")),
    Case("packed-bits-mismatch", "packed map: bits differ from the packing", "info {f}/map-bits.safetensors",
         ("packed model", "does not fit 4-bit codes")),
    Case("packed-codes-cut", "packed codes one byte short", "eval {f}/codes-short.safetensors", ("packed model", "needs 29 bytes, got 28"),
         sub=True),
    Case("packed-unknown-layer", "packed map names a layer the model lacks", "info {f}/map-layer.safetensors",
         ("packed model", "no such module")),
    Case("packed-map-not-json", "packed map that is not JSON", "info {f}/map-json.safetensors", ("quantization map is not valid JSON",)),
    Case("packed-truncated", "packed file cut short", "eval {f}/cut.safetensors", ("not a readable safetensors file",)),
    Case("packed-config-garbled", "packed file whose stored config is unreadable", "eval {f}/config.safetensors",
         ("stored in the packed file is unreadable",)),
    Case("predict-unreadable-image", "predict on a file that is not an image", "predict {run} {f}/notes.pt",
         ("cannot read image", "notes.pt")),
]


# ---------------------------------------------------------------------------------------------
# The world the cases point at


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cifar_folder(root: Path) -> Path:
    """A good CIFAR-10 folder of 20 images a batch; returns its first training batch, the one cases break."""
    return make_cifar10(root, n=20) / "data_batch_1"


def _packed_variants(good: Path, f: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    qmap = json.loads(meta["apprentice"])
    layer = next(n for n, entry in qmap["layers"].items() if entry["weights"])

    def variant(name: str, edit=None, tensors_=None, text=None) -> None:
        q = json.loads(json.dumps(qmap))
        if edit:
            edit(q)
        save_file(tensors_ or tensors, str(f / name), metadata={**meta, "apprentice": text or json.dumps(q)})

    variant("map-shape.safetensors", lambda q: q["layers"][layer]["weights"]["shape"].__setitem__(0, 5))
    variant("map-bits.safetensors", lambda q: q["layers"][layer]["weights"].__setitem__("bits", 4))
    variant("map-layer.safetensors", lambda q: q["layers"].__setitem__("nolayer", q["layers"][layer]))
    variant("map-json.safetensors", text="{not json")
    variant("config.safetensors", lambda q: q["metadata"].__setitem__("config", {"model": {"name": 5}}))
    short = dict(tensors)
    short[f"{layer}.weight_codes"] = short[f"{layer}.weight_codes"][:-1].clone()
    variant("codes-short.safetensors", tensors_=short)
    (f / "cut.safetensors").write_bytes(good.read_bytes()[:400])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    run, partial, f, d = root / "done", root / "partial", root / "files", root / "data"
    fit(load_config(None, [*TINY, f"train.out={run}"]))
    shutil.copytree(run, partial)
    (partial / "summary.json").unlink()  # stopped after its last checkpoint: a run to resume
    f.mkdir()
    cfg = root / "tiny.yaml"
    cfg.write_text(dump_yaml(load_config(None, TINY)))
    (f / "broken.yaml").write_text("model: {name: resnet8\n")
    (f / "list.yaml").write_text("- model\n- optim\n")
    (f / "dup.yaml").write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    (f / "tag.yaml").write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    (f / "unknown.yaml").write_text("optim:\n  lrr: 0.1\n")
    last = (run / "checkpoints" / "last.pt").read_bytes()
    (f / "truncated.pt").write_bytes(last[: len(last) // 2])
    (f / "empty.pt").write_bytes(b"")
    (f / "notes.pt").write_text("not a checkpoint\n")
    for name, kwargs in (("resnet14", {"name": "resnet14"}), ("classes100", {"num_classes": 100}),
                         ("rgb", {"in_channels": 3})):
        arch = {"name": "resnet8", "num_classes": 10, "in_channels": 1, "width": 0.25, **kwargs}
        torch.save(build_model(**arch).state_dict(), f / f"{name}.pt")
    for name, edit in (("nan.pt", lambda c: c["model"]["conv1.weight"].fill_(float("nan"))),
                       ("not-tensors.pt", lambda c: c["model"].__setitem__("conv1.weight", 5)),
                       ("bad-plan.pt", lambda c: c["plan"].__setitem__(next(iter(c["plan"])), "x")),
                       ("damaged-run/checkpoints/last.pt", lambda c: c.pop("optimizer"))):
        copy = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        edit(copy)
        if name.startswith("damaged-run"):
            shutil.copytree(partial, f / "damaged-run")
        torch.save(copy, f / name)
    (f / "empty-run").mkdir()
    (f / "empty-run" / "config.yaml").write_text(cfg.read_text())
    assert main(["export", str(run), "--format", "packed", "--out", str(f / "good.safetensors")]) == 0
    _packed_variants(f / "good.safetensors", f)
    # data: one good copy of each format, then one broken copy per case
    make_idx_folder(d / "fm", n_train=64, n_test=64, gz=False)
    for name, breaks in (("idx-truncated", lambda p: p.write_bytes(p.read_bytes()[:500])),
                         ("idx-magic", lambda p: p.write_bytes((2052).to_bytes(4, "big") + p.read_bytes()[4:]))):
        shutil.copytree(d / "fm", d / name)
        breaks(d / name / "train-images-idx3-ubyte")
    shutil.copytree(d / "fm", d / "idx-labels")
    labels = np.random.default_rng(1).integers(0, 10, 64)
    labels[5] = 12
    write_idx(d / "idx-labels" / "train-labels-idx1-ubyte", labels)
    shutil.copytree(d / "fm", d / "idx-count")
    write_idx(d / "idx-count" / "train-labels-idx1-ubyte", labels[:60] % 10)
    for name in ("cifar-truncated", "cifar-magic", "cifar-labels"):
        batch = _cifar_folder(d / name)
        if name == "cifar-truncated":
            batch.write_bytes(batch.read_bytes()[:300])
        elif name == "cifar-magic":
            batch.write_bytes(b"GARBAGE" + batch.read_bytes()[7:])
        else:
            with open(batch, "wb") as fh:
                pickle.dump({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19 + [10]}, fh, protocol=2)
    _folder_cases(d)
    return {"root": root, "run": run, "partial": partial, "f": f, "d": d, "cfg": cfg,
            "hashes": {"run": snapshot(run), "partial": snapshot(partial)}}


def _folder_cases(d: Path) -> None:
    """Your own images, broken: a val/ without one class, a corrupt image, channels-last arrays."""
    write_image_folder(d / "folder-classes", classes=("cat", "dog"), counts=(("train", 4), ("val", 2)))
    shutil.rmtree(d / "folder-classes" / "val" / "dog")
    write_image_folder(d / "folder-corrupt", classes=("cat", "dog"), counts=(("train", 4), ("val", 2)))
    (d / "folder-corrupt" / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (d / "npz").mkdir()
    np.savez(d / "npz" / "train.npz", images=np.zeros((8, 16, 16, 3), np.uint8), labels=np.arange(8) % 2)


def argv_of(case: Case, world: dict, new: Path) -> list[str]:
    return case.argv.format(**{k: v for k, v in world.items() if isinstance(v, Path)}, new=new).split()


def check_message(case: Case, stderr: str) -> str:
    """The error line of ``stderr`` (argparse usage errors end with theirs), checked against the case."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    if case.usage:  # argparse: the usage text, then one error line
        assert lines[0].startswith("usage: ") and re.match(r"apprentice \w+: error: ", lines[-1]), stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("apprentice: error: "), stderr
    line = lines[-1]
    for word in case.words:
        assert word in line, f"{case.id}: {word!r} not in {line!r}"
    return line


def check_nothing_changed(world: dict, new: Path) -> None:
    assert snapshot(world["run"]) == world["hashes"]["run"]
    assert snapshot(world["partial"]) == world["hashes"]["partial"]
    assert not new.exists(), f"a failed command left {new}"


# ---------------------------------------------------------------------------------------------
# The tests

_SEEN: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_doc(world):
    yield
    target = os.environ.get("APPRENTICE_BAD_INPUTS_DOC")
    if target and len(_SEEN) == len(CASES):
        write_doc(Path(target), world)


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES) and len({c.argv for c in CASES}) == len(CASES)
    assert sum(c.sub for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case, world, tmp_path, capsys):
    new = tmp_path / "new"
    code = main(argv_of(case, world, new))
    err = capsys.readouterr().err
    assert code == case.code, err
    _SEEN[case.id] = check_message(case, err)
    check_nothing_changed(world, new)


def test_bad_inputs_as_real_processes(world, tmp_path):
    """The ``sub`` cases through ``python -m apprentice``, two at a time: real stderr, real exit codes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cases = [c for c in CASES if c.sub]

    def run(case: Case) -> tuple[Case, Path, subprocess.CompletedProcess]:
        new = tmp_path / case.id
        proc = subprocess.run([sys.executable, "-m", "apprentice", *argv_of(case, world, new)], capture_output=True,
                              text=True, env=env, timeout=120, check=False)
        return case, new, proc

    with ThreadPoolExecutor(2) as pool:
        for case, new, proc in pool.map(run, cases):
            assert proc.returncode == case.code, (case.id, proc.stderr)
            check_message(case, proc.stderr)
            assert proc.stdout == ""
            check_nothing_changed(world, new)


def test_debug_adds_the_traceback(world, tmp_path, capsys):
    case = next(c for c in CASES if c.id == "teacher-truncated")
    assert main([*argv_of(case, world, tmp_path / "new"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("apprentice: error: ")


def test_export_may_replace_an_earlier_export_but_nothing_else(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    out = run / "model.safetensors"
    for _ in range(2):  # an export kept inside the run folder can be redone
        assert main(["export", str(run), "--format", "packed", "--out", str(out)]) == 0
    before = snapshot(run)
    for target in (run / "checkpoints" / "best.pt", run / "config.yaml", world["f"] / "resnet14.pt"):
        assert main(["export", str(run), "--format", "packed", "--out", str(target)]) == 2
    assert snapshot(run) == before and "refusing to overwrite" in capsys.readouterr().err


def test_the_doc_lists_every_case_with_its_message():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \|.*$", DOC.read_text(), re.MULTILINE)}
    for case in CASES:
        assert case.id in rows, f"{case.id} missing from {DOC}"
        row = rows[case.id].replace("\\|", "|")
        for word in case.words:
            assert word in row, f"{case.id}: {word!r} not in the doc's row"
    assert set(rows) == {c.id for c in CASES}


def write_doc(path: Path, world: dict) -> None:
    """docs/bad-inputs.md from the messages the in-process cases printed (paths shortened)."""
    def short(text: str) -> str:
        for key in ("cfg", "run", "partial", "f", "d"):
            text = text.replace(str(world[key]), {"cfg": "tiny.yaml", "run": "runs/done", "partial": "runs/partial",
                                                  "f": "files", "d": "data"}[key])
        return re.sub(r"/\S*/new\b", "runs/new", text).replace("|", "\\|")

    old = path.read_text() if path.is_file() else ""
    head = old.split("\n| id |")[0].rstrip() + "\n\n" if "\n| id |" in old else "# Bad inputs\n\n"
    lines = ["| id | input | command | message (exit status 2) |", "| --- | --- | --- | --- |"]
    for case in CASES:
        command = short(" ".join(argv_of(case, world, Path("/x/new"))))
        message = short(_SEEN[case.id])
        lines.append(f"| `{case.id}` | {case.what} | `{command}` | {message} |")
    path.write_text(head + "\n".join(lines) + "\n")
