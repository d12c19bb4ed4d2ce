"""examples/: a user's own models from the command line. Registered the documented way (``--import
examples/my_models.py``, or a package's entry point), they train as students and as teachers of
schemes B and C beside the built-in ResNets, and evaluate, export and reload like them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_models import _install_package

from apprentice.models import ENTRY_POINT_GROUP

from test_cli import one_error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
IMPORT = ("--import", str(EXAMPLES / "my_models.py"))
TINY = ("data.name=synthetic", "data.download=false", "data.limit=256", "data.batch_size=64",
        "data.eval_batch_size=256", "train.epochs=1", "train.device=cpu", "optim.lr=0.05")
TEACHER, STUDENT = str(EXAMPLES / "tinyvgg_teacher.yaml"), str(EXAMPLES / "tinyvgg_ternary_b.yaml")


def train(out: Path, recipe: str, *overrides: str) -> Path:
    proc = run_cli("train", *IMPORT, recipe, *TINY, f"train.out={out}", *overrides)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """User and built-in models on both sides of schemes B and C (tiny synthetic runs)."""
    tmp = tmp_path_factory.mktemp("examples")
    small = "model.args={channels: 8, hidden: 16}"
    r = {"user_teacher": train(tmp / "user_teacher", TEACHER, small),
         "resnet_teacher": train(tmp / "resnet_teacher", TEACHER, "model.name=resnet8", "model.args=null"),
         "sep_fp": train(tmp / "sep_fp", TEACHER, "model.name=sepnet", "model.args={channels: 4}")}
    r["b_user_user"] = train(tmp / "b_user_user", STUDENT, small, f"distill.teacher={r['user_teacher']}")
    r["b_resnet_user"] = train(tmp / "b_resnet_user", STUDENT, "model.name=resnet8", "model.args=null",
                               "quant.precision=2W/8A", f"distill.teacher={r['user_teacher']}")
    r["c_user_resnet"] = train(tmp / "c_user_resnet", STUDENT, "model.name=sepnet", "model.args={channels: 4}",
                               "distill.scheme=C", f"distill.teacher={r['resnet_teacher']}",
                               f"distill.student_init={r['sep_fp']}", "quant.precision=2W/8A")
    return r


def test_user_models_train_as_students_and_teachers_of_b_and_c(runs):
    proc = run_cli("compare", *IMPORT, *(str(p) for p in runs.values()), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["run"]).name: r for r in json.loads(proc.stdout)}
    assert {k: (rows[k]["model"], rows[k]["precision"], rows[k]["scheme"]) for k in runs} == {
        "user_teacher": ("tinyvgg", "32W/32A", "baseline"), "resnet_teacher": ("resnet8", "32W/32A", "baseline"),
        "sep_fp": ("sepnet", "32W/32A", "baseline"), "b_user_user": ("tinyvgg", "2W/32A", "B"),
        "b_resnet_user": ("resnet8", "2W/8A", "B"), "c_user_resnet": ("sepnet", "2W/8A", "C")}
    info = run_cli("info", *IMPORT, str(runs["c_user_resnet"]))
    assert info.returncode == 0, info.stderr
    assert "model: sepnet num_classes=10 in_channels=1 channels=4" in info.stdout
    assert "blocks.0.depthwise.0  conv2d  2W/8A" in info.stdout  # a depthwise conv, quantized


@pytest.mark.parametrize("run", ["b_user_user", "c_user_resnet"])
def test_user_model_exports_and_reloads_in_a_fresh_process(runs, tmp_path, run):
    pytest.importorskip("onnx")
    packed, onnx_file = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    for fmt, out in (("packed", packed), ("onnx", onnx_file)):
        proc = run_cli("export", *IMPORT, str(runs[run]), "--format", fmt, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    results = []
    for source in (runs[run], packed):
        proc = run_cli("eval", *IMPORT, str(source), "--json")
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))
    assert results[0]["top1"] == results[1]["top1"] and results[0]["images"] == results[1]["images"]
    import onnx

    meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}["apprentice"])
    assert meta["arch"]["name"] == {"b_user_user": "tinyvgg", "c_user_resnet": "sepnet"}[run]


def test_without_the_registration_the_error_says_what_is_missing(runs, tmp_path):
    for args in (("eval", str(runs["b_user_user"])), ("info", str(runs["c_user_resnet"])),
                 ("train", TEACHER, *TINY, f"train.out={tmp_path / 'x'}")):
        proc = run_cli(*args)
        assert proc.returncode == 2
        line = one_error_line(proc.stderr)
        assert "unknown model" in line and "--import" in line, line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("spec", "body", "message"), [
    ("missing.py", None, "--import 'missing.py': no such file"),
    ("broken.py", "def f(:\n", "--import 'broken.py' failed: SyntaxError"),
    ("raises.py", "raise RuntimeError('no GPU here')\n", "--import 'raises.py' failed: RuntimeError: no GPU here"),
    ("no_such_module_x", None, "--import 'no_such_module_x': no module named 'no_such_module_x'"),
])
def test_import_errors_are_one_line(tmp_path, spec, body, message):
    if body is not None:
        (tmp_path / spec).write_text(body)
    proc = run_cli("info", "--import", spec, "nowhere", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in one_error_line(proc.stderr)


def test_a_package_entry_point_needs_no_import_flag(tmp_path):
    code = (EXAMPLES / "my_models.py").read_text().replace("@apprentice.register_model(\"tinyvgg\")", "")
    _install_package(tmp_path, "vggpkg", "pkg_vgg = vggpkg:TinyVGG", code.replace(
        "@apprentice.register_model(\"sepnet\")", ""))
    env_path = os.pathsep.join([str(tmp_path), str(ROOT)])
    proc = run_cli("train", TEACHER, *TINY, "model.name=pkg_vgg", "model.args={channels: 4, hidden: 8}",
                   f"train.out={tmp_path / 'run'}", pythonpath=env_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", str(tmp_path / "run"), "--json", pythonpath=env_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"] > 0, proc.stderr
    assert ENTRY_POINT_GROUP == "apprentice.models"
