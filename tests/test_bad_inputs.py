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

import dataclasses
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
from safetensors.torch import save_file

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
    words the error line must contain, the exit status, whether it also runs as a subprocess,
    whether argparse answers it (its usage text, then the one error line), and the environment
    variables it sets (torchrun's)."""

    id: str
    what: str
    argv: str
    words: tuple[str, ...]
    code: int = 2
    sub: bool = False
    usage: bool = False
    env: tuple[tuple[str, str], ...] = ()


T = "train {cfg}"
# Train cases point at the finished run with --overwrite: a bad input must fail before anything of it is cleared.
NEW = "train.out={run} --overwrite"
TEACHER_B = "distill.scheme=B distill.teacher={f}"
AS_R8 = "distill.teacher_model.name=resnet8 distill.teacher_model.width=0.25"
FM = "data.name=fashion_mnist data.limit=null data.dir={d}"
CIFAR = "data.name=cifar10 data.limit=null data.batch_size=16 data.dir={d}"
FOLDER = "data.name=folder data.limit=null data.batch_size=4 data.workers=0 data.dir={d}"
APART = "a command never writes where it reads"
CACHE_B = "distill.scheme=B distill.teacher={partial} distill.teacher_cache={f}"
STALE = "was made for something else"

CASES = [
    # ---- the recipe and its overrides
    Case("yaml-malformed", "recipe with broken YAML syntax", "train {f}/broken.yaml", ("broken.yaml:2", "invalid YAML"), sub=True),
    Case("yaml-not-a-mapping", "recipe that is a YAML list", "train {f}/list.yaml", ("expected a mapping of sections",)),
    Case("yaml-empty", "0-byte recipe", "train {f}/empty.yaml", ("empty.yaml", "the recipe sets nothing"), sub=True),
    Case("yaml-comments-only", "recipe holding only comments", "train {f}/comments.yaml",
         ("comments.yaml", "the recipe sets nothing")),
    Case("yaml-empty-mapping", "recipe that is an empty mapping {}", "train {f}/empty-map.yaml",
         ("empty-map.yaml", "the recipe sets nothing")),
    Case("yaml-empty-sections", "recipe whose sections are all empty", "train {f}/empty-sections.yaml",
         ("empty-sections.yaml", "the recipe sets nothing")),
    Case("yaml-duplicate-key", "recipe with a key written twice", "train {f}/dup.yaml", ("duplicate key 'lr'",)),
    Case("yaml-python-tag", "recipe with a !!python/object tag", "train {f}/tag.yaml",
         ("tag.yaml:1", "YAML tag !!python/object/apply:os.system is not allowed"), sub=True),
    Case("yaml-binary", "a checkpoint given as the recipe", "train {run}/checkpoints/last.pt", ("not UTF-8 text",)),
    Case("recipe-missing", "recipe file that does not exist", "train {f}/nope.yaml",
         ("cannot read config file", "No such file or directory")),
    Case("recipe-is-an-override", "an override where the recipe belongs", "train optim.lr=0.1 train.out={run} --overwrite",
         ("cannot read config file 'optim.lr=0.1'", "the first argument is the YAML recipe")),
    Case("unknown-key-file", "unknown key in the recipe", "train {f}/unknown.yaml", ("unknown key 'optim.lrr'", "allowed:")),
    Case("unknown-key-override", "unknown key on the command line", f"{T} model.nmae=resnet8 {NEW}",
         ("unknown key 'model.nmae'", "allowed: name"), sub=True),
    Case("model-unregistered", "a model of one's own without --import", f"{T} model.name=tinyvgg {NEW}",
         ("model.name: unknown model 'tinyvgg'", "register_model", "--import"), sub=True),
    Case("model-args-unknown", "a constructor argument the model does not take", f"{T} model.args={{{{\"depth\":3}}}} {NEW}",
         ("model.args: model 'resnet8' takes no argument 'depth'",)),
    Case("import-missing", "--import of a file that does not exist", f"train --import {{f}}/my_models.py {{cfg}} {NEW}",
         ("--import", "my_models.py", "no such file")),
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
    # ---- torchrun's variables (checked before any process group is joined)
    Case("torchrun-rank-too-high", "RANK not below WORLD_SIZE", f"{T} {NEW}", ("RANK=2 contradicts WORLD_SIZE=2",),
         sub=True, env=(("WORLD_SIZE", "2"), ("RANK", "2"))),
    Case("torchrun-rank-without-world", "RANK set, WORLD_SIZE not", f"{T} {NEW}",
         ("RANK=1 contradicts WORLD_SIZE (not set: one process)",), env=(("RANK", "1"),)),
    Case("torchrun-world-not-integer", "WORLD_SIZE that is not an integer", f"{T} {NEW}",
         ("WORLD_SIZE='two' is not an integer",), env=(("WORLD_SIZE", "two"),)),
    Case("torchrun-world-zero", "WORLD_SIZE=0", f"{T} {NEW}", ("WORLD_SIZE=0 must be at least 1",),
         env=(("WORLD_SIZE", "0"),)),
    Case("torchrun-local-rank", "LOCAL_RANK not below WORLD_SIZE", f"{T} {NEW}",
         ("LOCAL_RANK=4 contradicts WORLD_SIZE=2",), env=(("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "4"))),
    Case("torchrun-no-master", "WORLD_SIZE=2 without MASTER_ADDR", f"{T} {NEW}",
         ("MASTER_ADDR is not set", "WORLD_SIZE=2"), env=(("WORLD_SIZE", "2"), ("RANK", "0"))),
    Case("torchrun-bad-port", "MASTER_PORT out of range", f"{T} {NEW}",
         ("MASTER_PORT='99999' is not a port number",),
         env=(("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "99999"))),
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
         f"{T} distill.scheme=B distill.teacher={{partial}} distill.teacher_model.name=resnet14 {NEW}",
         ("does not match teacher run", "name='resnet14' (run has 'resnet8')")),
    Case("student-init-other-architecture", "scheme C init from resnet14 weights",
         f"{T} distill.scheme=C distill.teacher={{partial}} distill.student_init={{f}}/resnet14.pt {NEW}",
         ("distill.student_init", "resnet14.pt", "does not fit the student")),
    Case("student-init-missing", "scheme C init file that does not exist",
         f"{T} distill.scheme=C distill.teacher={{partial}} distill.student_init={{f}}/nope.pt {NEW}",
         ("distill.student_init", "nope.pt", "does not exist")),
    Case("teacher-packed", "a packed export as the teacher", f"{T} {TEACHER_B}/good.safetensors {NEW}",
         ("distill.teacher", "good.safetensors", "is a packed export", "exported from"), sub=True),
    Case("teacher-onnx", "an ONNX export as the teacher", f"{T} {TEACHER_B}/model.onnx {NEW}",
         ("distill.teacher", "model.onnx", "is an ONNX export")),
    Case("teacher-is-a-cache", "a teacher cache as the teacher", f"{T} {TEACHER_B}/t.cache {NEW}",
         ("distill.teacher", "t.cache", "is a teacher cache")),
    Case("student-init-packed", "a packed export as scheme C's init",
         f"{T} distill.scheme=C distill.teacher={{partial}} distill.student_init={{f}}/good.safetensors {NEW}",
         ("distill.student_init", "good.safetensors", "is a packed export")),
    Case("student-init-onnx", "an ONNX export as scheme C's init",
         f"{T} distill.scheme=C distill.teacher={{partial}} distill.student_init={{f}}/model.onnx {NEW}",
         ("distill.student_init", "model.onnx", "is an ONNX export")),
    # ---- a run never writes where it reads (every case points train.out at a run it reads)
    Case("out-is-teacher", "train.out is the teacher's run folder", f"{T} distill.scheme=B distill.teacher={{run}} {NEW}",
         ("train.out", "is distill.teacher", APART), sub=True),
    Case("out-is-teacher-link", "the teacher given through a symbolic link to train.out",
         f"{T} {TEACHER_B}/link-to-done {NEW}", ("is (once links and '..' are resolved) distill.teacher", "link-to-done")),
    Case("out-is-teacher-dotdot", "the teacher given through '..' to train.out", f"{T} distill.scheme=B distill.teacher={{run}}/../done {NEW}",
         ("is distill.teacher", "../done", APART)),
    Case("out-holds-teacher", "the teacher is a checkpoint file inside train.out",
         f"{T} distill.scheme=B distill.teacher={{run}}/checkpoints/best.pt {NEW}", ("holds distill.teacher", "best.pt")),
    Case("out-parent-of-teacher", "train.out is a parent folder of the teacher's run",
         f"{T} distill.scheme=B distill.teacher={{run}} train.out={{root}} --overwrite", ("holds distill.teacher", APART)),
    Case("out-is-student-init", "train.out is scheme C's init run",
         f"{T} distill.scheme=C distill.teacher={{partial}} distill.student_init={{run}} {NEW}",
         ("is distill.student_init", APART)),
    Case("out-holds-teacher-cache", "the teacher cache lies inside train.out",
         f"{T} distill.scheme=B distill.teacher={{partial}} distill.teacher_cache={{run}}/t.cache {NEW}",
         ("holds distill.teacher_cache", APART)),
    Case("resume-is-teacher", "--resume of the run that is also the teacher",
         "train {cfg} distill.scheme=B distill.teacher={partial} train.out={partial} --resume",
         ("train.out", "is distill.teacher", APART)),
    # ---- teacher caches (distill.teacher_cache, made by apprentice cache-teacher from runs/done)
    Case("cache-other-teacher", "cache made from another teacher",
         f"{T} distill.scheme=B distill.teacher={{f}}/other-teacher.pt distill.teacher_cache={{f}}/t.cache {NEW}",
         ("distill.teacher_cache", STALE, "teacher weights (hash): file", "Rebuild it with apprentice cache-teacher"),
         sub=True),
    Case("cache-other-limit", "cache made with another data.limit", f"{T} {CACHE_B}/t.cache data.limit=96 {NEW}",
         (STALE, "limit: file 128, here 96", "fingerprint")),
    Case("cache-other-holdout", "cache made without the holdout", f"{T} {CACHE_B}/t.cache data.holdout=16 {NEW}",
         (STALE, "holdout: file 0, here 16")),
    Case("cache-other-dataset", "cache of another data set",
         f"{T} {CACHE_B}/t.cache data.name=fashion_mnist data.limit=null data.dir={{d}}/fm {NEW}",
         (STALE, "dataset: file 'synthetic', here 'fashion_mnist'", "normalisation mean", "augmentation flip",
          "image_size", "views an image")),
    Case("cache-scheme-a", "a teacher cache with scheme A",
         f"{T} distill.scheme=A distill.teacher_model.name=resnet8 distill.teacher_cache={{f}}/t.cache {NEW}",
         ("distill.teacher_cache", "scheme 'A'")),
    Case("cache-packed", "a packed export as the cache", f"{T} {CACHE_B}/good.safetensors {NEW}",
         ("distill.teacher_cache", "is a packed export")),
    Case("cache-other-safetensors", "a safetensors weights file as the cache", f"{T} {CACHE_B}/resnet14.safetensors {NEW}",
         ("distill.teacher_cache", "neither a teacher cache nor a packed export")),
    Case("cache-checkpoint", "a checkpoint as the cache", f"{T} {CACHE_B}/resnet14.pt {NEW}",
         ("distill.teacher_cache", "resnet14.pt", "is not a safetensors file")),
    Case("cache-folder", "a folder as the cache", f"{T} distill.scheme=B distill.teacher={{partial}} "
         f"distill.teacher_cache={{partial}} {NEW}", ("distill.teacher_cache", "is a folder")),
    Case("cache-missing", "cache file that does not exist", f"{T} {CACHE_B}/nope.cache {NEW}",
         ("distill.teacher_cache", "nope.cache", "does not exist")),
    Case("cache-non-finite", "cache holding a NaN logit", f"{T} {CACHE_B}/nan.cache {NEW}",
         ("nan.cache", "non-finite values (NaN or inf), first at image 3", "rebuild it")),
    Case("cache-incomplete", "cache whose build did not finish", f"{T} {CACHE_B}/unfinished.cache {NEW}",
         ("unfinished.cache", "is incomplete; build it again to finish it")),
    Case("cache-interrupted", "cache whose build was interrupted (only its .partial file exists)",
         f"{T} {CACHE_B}/stopped.cache {NEW}", ("stopped.cache", "does not exist", "its build was interrupted",
                                                  "run apprentice cache-teacher again")),
    Case("cache-truncated", "cache file cut short", f"{T} {CACHE_B}/cut.cache {NEW}", ("cut.cache", "truncated")),
    Case("cache-version", "cache of another format version", f"{T} {CACHE_B}/v9.cache {NEW}",
         ("v9.cache", "format version '9'", "rebuild it")),
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
    Case("resume-nan-checkpoint", "--resume of a last.pt holding NaN weights", "train {cfg} train.out={f}/nan-run --resume",
         ("nan-run", "non-finite values", "cannot be resumed")),
    Case("out-is-a-cache", "train.out names a teacher cache", "train {cfg} train.out={f}/t.cache",
         ("is a file, not a folder",)),
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
    Case("eval-nan-checkpoint", "eval of a checkpoint holding NaN weights", "eval {f}/nan.pt",
         ("checkpoint", "nan.pt", "non-finite values", "conv1.weight"), sub=True),
    Case("export-nan-checkpoint", "export of a checkpoint holding NaN weights",
         "export {f}/nan.pt --format packed --out {new}", ("nan.pt", "non-finite values")),
    Case("eval-teacher-cache", "eval of a teacher cache", "eval {f}/t.cache", ("t.cache", "is a teacher cache")),
    Case("info-onnx", "info of an ONNX export", "info {f}/model.onnx", ("model.onnx", "is an ONNX export")),
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
    Case("export-over-read-checkpoint", "--out is the checkpoint it exports",
         "export {run} --format packed --out {run}/checkpoints/best.pt", ("is the checkpoint being exported", APART)),
    Case("export-over-itself-by-link", "--out is the exported checkpoint, given through a link",
         "export {f}/link-to-best.pt --format packed --out {run}/checkpoints/best.pt",
         ("is (once links and '..' are resolved) the checkpoint being exported", "link-to-best.pt")),
    Case("export-over-cache", "--out is a teacher cache", "export {run} --format packed --out {f}/t.cache",
         ("t.cache", "is not an earlier packed export")),
    Case("cache-teacher-over-teacher", "cache-teacher --out is the teacher's checkpoint",
         "cache-teacher {run} --out {run}/checkpoints/best.pt", ("is the teacher's checkpoint", APART), sub=True),
    Case("cache-teacher-out-folder", "cache-teacher --out is the teacher's run folder", "cache-teacher {run} --out {run}",
         ("is a folder; give a file name",)),
    Case("cache-teacher-over-cache", "cache-teacher --out is an existing cache", "cache-teacher {run} --out {f}/t.cache",
         ("t.cache", "already exists")),
    Case("cache-teacher-packed", "cache-teacher of a packed export", "cache-teacher {f}/good.safetensors --out {new}",
         ("good.safetensors", "is a packed export")),
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
    Case("packed-nan-scale", "packed file with a NaN weight scale", "eval {f}/nan-scale.safetensors",
         ("nan-scale.safetensors", "non-finite values", "weight_scale"), sub=True),
    Case("packed-inf-clip", "packed map with an infinite activation clip", "eval {f}/inf-clip.safetensors",
         ("inf-clip.safetensors", "non-finite activation clip (inf)")),
    Case("packed-inf-batchnorm", "packed file with an infinite BatchNorm variance", "info {f}/inf-bn.safetensors",
         ("inf-bn.safetensors", "non-finite values", "bn1.running_var")),
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


def _cache_variants(run: Path, f: Path) -> None:
    """A teacher cache of ``run`` over the tiny training set, and broken copies of it."""
    from apprentice.data import cache_teacher
    from apprentice.runs import load_run

    cache_teacher(str(f / "t.cache"), load_run(run).model, "synthetic", limit=128)
    raw = (f / "t.cache").read_bytes()
    logits = 8 + int.from_bytes(raw[:8], "little")  # the data region starts with the logits [image, view, class]
    nan = bytearray(raw)
    row = logits + 3 * 25 * 10 * 2  # image 3 (25 views of 10 float16 logits an image)
    nan[row:row + 2] = np.array([np.nan], np.float16).tobytes()
    (f / "nan.cache").write_bytes(bytes(nan))
    unfinished = raw[:-1] + b"\x00"  # the last byte is the `done` flag of the last chunk
    (f / "unfinished.cache").write_bytes(unfinished)
    (f / ".stopped.cache.partial").write_bytes(unfinished)  # a build stopped before it renamed its work
    (f / "cut.cache").write_bytes(raw[:-10])
    assert b'"version":"1"' in raw
    (f / "v9.cache").write_bytes(raw.replace(b'"version":"1"', b'"version":"9"', 1))


def _packed_variants(good: Path, f: Path) -> None:
    from safetensors import safe_open

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
    for name, key, value in (("nan-scale", f"{layer}.weight_scale", float("nan")), ("inf-bn", "bn1.running_var", float("inf"))):
        variant(f"{name}.safetensors", tensors_={**tensors, key: torch.full_like(tensors[key], value)})
    variant("inf-clip.safetensors", lambda q: q["layers"][layer]["activations"].__setitem__("clip", float("inf")))
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
                       ("other-teacher.pt", lambda c: c["model"]["conv1.weight"].add_(0.01)),
                       ("nan-run/checkpoints/last.pt", lambda c: c["model"]["conv1.weight"].fill_(float("nan"))),
                       ("not-tensors.pt", lambda c: c["model"].__setitem__("conv1.weight", 5)),
                       ("bad-plan.pt", lambda c: c["plan"].__setitem__(next(iter(c["plan"])), "x")),
                       ("damaged-run/checkpoints/last.pt", lambda c: c.pop("optimizer"))):
        copy = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        edit(copy)
        if "/" in name:  # a copy of the unfinished run with a damaged last.pt
            shutil.copytree(partial, f / name.split("/")[0])
        torch.save(copy, f / name)
    (f / "empty-run").mkdir()
    (f / "empty-run" / "config.yaml").write_text(cfg.read_text())
    assert main(["export", str(run), "--format", "packed", "--out", str(f / "good.safetensors")]) == 0
    _packed_variants(f / "good.safetensors", f)
    assert main(["export", str(run), "--format", "onnx", "--out", str(f / "model.onnx")]) == 0
    _cache_variants(run, f)
    save_file(torch.load(f / "resnet14.pt", weights_only=True), str(f / "resnet14.safetensors"))
    (f / "empty.yaml").write_bytes(b"")
    (f / "comments.yaml").write_text("# model:\n#   name: resnet8\n\n")
    (f / "empty-map.yaml").write_text("{}\n")
    (f / "empty-sections.yaml").write_text("model:\noptim:\n  # lr: 0.1\n")
    (f / "link-to-done").symlink_to(run, target_is_directory=True)
    (f / "link-to-best.pt").symlink_to(run / "checkpoints" / "best.pt")
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
    assert len({c.id for c in CASES}) == len(CASES) and len({(c.argv, c.env) for c in CASES}) == len(CASES)
    assert sum(c.sub for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case, world, tmp_path, capsys, monkeypatch):
    new = tmp_path / "new"
    for key, value in case.env:
        monkeypatch.setenv(key, value)
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
                              text=True, env={**env, **dict(case.env)}, timeout=120, check=False)
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


def _cache_messages() -> list[str]:
    """The teacher-cache messages no command line of the catalogue reaches, made by the code itself."""
    from types import SimpleNamespace

    from apprentice.data import teacher_cache as tc
    from apprentice.errors import ApprenticeError

    source = tc.CacheSource("exact", "0" * 64, "synthetic", "f" * 64, 0, 128, 10, (0.5,), (0.25,), 2, False, 16,
                            "float16", 25, 10, "")
    mapped = SimpleNamespace(layout=SimpleNamespace(metadata={"format": tc.FORMAT, "version": tc.VERSION,
                                                              "source": source.to_json()}))
    calls = [lambda: tc.check_source(Path("F"), mapped, dataclasses.replace(source, holdout=16)),
             lambda: tc.check_source(Path("F"), mapped, dataclasses.replace(source, mode="sampled"))]
    for logit, stored in ((float("nan"), float("nan")), (1e6, float("inf"))):
        calls.append(lambda logit=logit, stored=stored: tc.check_logits(
            torch.tensor([[logit]]), np.array([[stored]], np.float16), "float16", lambda row: "image 12 view 3"))
    messages = []
    for call in calls:
        with pytest.raises(ApprenticeError) as e:
            call()
        messages.append(str(e.value))
    return messages


def test_the_doc_states_the_teacher_cache_messages_and_fields():
    """The doc's prose on teacher caches: the messages as the code words them, every recorded field by its name."""
    from apprentice.data import teacher_cache as tc

    text = " ".join(DOC.read_text().split())
    for message in _cache_messages():
        assert message in text, message
    for f in dataclasses.fields(tc.CacheSource):
        assert f"`{tc._FIELD_NAMES.get(f.name, f.name)}`" in text, f.name


def test_the_readme_and_reliability_doc_count_the_cases():
    for doc in (ROOT / "README.md", ROOT / "docs" / "reliability.md"):
        assert re.search(rf"lists the {len(CASES)} cases", " ".join(doc.read_text().split())), doc


def write_doc(path: Path, world: dict) -> None:
    """docs/bad-inputs.md from the messages the in-process cases printed (paths shortened)."""
    def short(text: str) -> str:
        for key in ("cfg", "run", "partial", "f", "d", "root"):
            text = text.replace(str(world[key]), {"cfg": "tiny.yaml", "run": "runs/done", "partial": "runs/partial",
                                                  "f": "files", "d": "data", "root": "runs"}[key])
        return re.sub(r"/\S*/new\b", "runs/new", text).replace("|", "\\|")

    old = path.read_text() if path.is_file() else ""
    head = old.split("\n| id |")[0].rstrip() + "\n\n" if "\n| id |" in old else "# Bad inputs\n\n"
    lines = ["| id | input | command | message (exit status 2) |", "| --- | --- | --- | --- |"]
    for case in CASES:
        command = short(" ".join([f"{k}={v}" for k, v in case.env] + argv_of(case, world, Path("/x/new"))))
        message = short(_SEEN[case.id])
        lines.append(f"| `{case.id}` | {case.what} | `{command}` | {message} |")
    path.write_text(head + "\n".join(lines) + "\n")
