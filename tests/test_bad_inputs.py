"""The bad-input catalogue: every case goes through the real command line and must end with one line
``apprentice: error: ...`` naming the problem, a non-zero exit status, no traceback, and no change
to any file of the runs already on disk.

`CASES` (tests/bad_input_cases.py) is the one table. The fixture trains one tiny finished run (synthetic data, resnet8 at width
0.25, four steps) and copies it as an unfinished one, hashes every file of both, and builds the
broken files (data, teachers, checkpoints, packed models). Training cases name the finished run
as ``train.out`` with ``--overwrite``, so they also show that a bad input fails before anything of
an existing run is cleared. Every case runs in-process through
``apprentice.cli.app``; the cases marked ``sub`` also run as real ``python -m apprentice``
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
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from apprentice.cli import main
from apprentice.config import dump_yaml, load_config
from apprentice.models import MODELS, build_model
from apprentice.run.loop import fit

import tiny_runs
from bad_input_cases import CASES, ROOT, Case
from format_writers import make_cifar10, make_idx_folder, write_idx, write_image_folder

TINY = [*tiny_runs.TINY, "quant.precision=2W/8A"]


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
    from apprentice.run.runs import load_run

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
    (f / "bad.pte").write_bytes(b"not an ExecuTorch program")
    (f / "bad.tflite").write_bytes(b"not a LiteRT model, not even close")
    _cache_variants(run, f)
    save_file(torch.load(f / "resnet14.pt", weights_only=True), str(f / "resnet14.safetensors"))
    (f / "empty.yaml").write_bytes(b"")
    (f / "comments.yaml").write_text("# model:\n#   name: resnet8\n\n")
    (f / "empty-map.yaml").write_text("{}\n")
    (f / "empty-sections.yaml").write_text("model:\noptim:\n  # lr: 0.1\n")
    # user code: files for --import that read the command line or exit, models that do not return logits
    (f / "argv_reader.py").write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)\n"
                                      "args = p.parse_args()\n")
    (f / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (f / "bad_models.py").write_text(
        "import torch\nfrom torch import nn\nimport apprentice\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=1, outputs=None, as_tuple=False):\n"
        "        super().__init__()\n        self.as_tuple = as_tuple\n"
        "        self.conv = nn.Conv2d(in_channels, 4, 3)\n        self.fc = nn.Linear(4, outputs or num_classes)\n"
        "    def forward(self, x):\n        f = self.conv(x).mean((2, 3))\n"
        "        return (self.fc(f), f) if self.as_tuple else self.fc(f)\n\n"
        "apprentice.register_model('seven_outputs', replace=True)(\n"
        "    lambda num_classes=10, in_channels=1, width=1.0: Net(num_classes, in_channels, outputs=7))\n"
        "apprentice.register_model('tuple_net', replace=True)(\n"
        "    lambda num_classes=10, in_channels=1, width=1.0: Net(num_classes, in_channels, as_tuple=True))\n")
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


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case, world, tmp_path, capsys, monkeypatch):
    new = tmp_path / "new"
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    before = dict(MODELS)  # a case's --import registers models: the next test sees the built-ins only,
    try:                   # and a later case imports the file again
        code = main(argv_of(case, world, new))
    finally:
        MODELS.clear()
        MODELS.update(before)
        for name in [m for m in sys.modules if m.startswith("apprentice_user.")]:
            del sys.modules[name]
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
