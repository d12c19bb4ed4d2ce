"""The command line: help texts, the one-line error policy and exit codes, and a short end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apprentice.cli import main
from apprentice.config import help_text

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
COMMANDS = ["train", "eval", "info", "export", "compare"]


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath or str(ROOT)}
    return subprocess.run([sys.executable, "-m", "apprentice", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, check=False)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("apprentice: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- help --------------------------------------------------------------------------------------


def test_top_level_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: apprentice {command}")
    assert "--debug" in out


def test_train_help_lists_every_config_key(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for line in help_text().splitlines():
        key = line.strip().split(":")[0]
        assert key in out, key
    for key in ("optim.lr", "distill.teacher_model.name", "quant.exclude", "train.on_nonfinite"):
        assert key in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_unknown_command_and_flag_are_usage_errors(capsys):
    assert main(["bogus"]) == 2
    assert main(["eval", "x", "--bogus"]) == 2
    assert main(["export", "x", "--format", "zip", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "unrecognized arguments: --bogus" in err


# -- error policy ------------------------------------------------------------------------------


def test_bad_config_key_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lrr: 0.1\n")
    proc = run_cli("train", str(cfg))
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "unknown key 'optim.lrr'" in line and str(cfg) in line


def test_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lrr: 0.1\n")
    proc = run_cli("train", str(cfg), "--debug")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "ApprenticeError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("apprentice: error: ")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "no/such.yaml"], "cannot read config file 'no/such.yaml'"),
        (["train", str(SMOKE), "optim.lr=abc"], "optim.lr: expected a float, got 'abc'"),
        (["train", str(SMOKE), "optim.lr"], "bad override 'optim.lr'"),
        (["train", str(SMOKE), "optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["train", str(SMOKE), "distill.scheme=B"], "distill.teacher: scheme 'B' needs a trained teacher"),
        (["train", str(SMOKE), "optim.lr=!!python/name:os.system x"], "YAML tag !!python/name:os.system is not allowed"),
        (["eval", "no/such/run"], "'no/such/run' does not exist"),
        (["info", "no/such/run"], "'no/such/run' does not exist"),
        (["compare", "no/such/run"], "'no/such/run' does not exist"),
        (["export", "no/such/run", "--format", "packed", "--out", "x"], "'no/such/run' does not exist"),
    ],
)
def test_user_errors_in_process(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in one_error_line(capsys.readouterr().err)


def test_yaml_tag_file_refused(tmp_path, capsys):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("train:\n  out: !!python/object/apply:os.system ['echo hacked']\n")
    assert main(["train", str(cfg)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{cfg}:2: YAML tag !!python/object/apply:os.system is not allowed" in line


def test_runtime_failure_exit_1_and_interrupt_130(monkeypatch, capsys):
    import apprentice.cli.app as cli

    def boom(args):
        raise RuntimeError("loss is nan at step 3\nsecond line")

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert main(["info", "x"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "RuntimeError: loss is nan at step 3 second line" in line and "--debug" in line
    monkeypatch.setattr(cli, "cmd_info", interrupt)
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err.strip() == "apprentice: interrupted"


def test_training_stop_codes_come_from_the_exception(monkeypatch, capsys):
    import apprentice.cli.app as cli
    from apprentice.train.runtime import TrainingInterrupted
    from apprentice.train.step import NonFiniteLossError

    def nonfinite(args):
        raise NonFiniteLossError("non-finite loss at step 2", step=2, checkpoint=None)

    def sigterm(args):
        raise TrainingInterrupted("stopped by SIGTERM at step 5; continue with --resume", exit_code=143, step=5)

    monkeypatch.setattr(cli, "cmd_train", nonfinite)
    assert main(["train", str(SMOKE)]) == 1
    assert one_error_line(capsys.readouterr().err) == "apprentice: error: non-finite loss at step 2"
    monkeypatch.setattr(cli, "cmd_train", sigterm)
    assert main(["train", str(SMOKE)]) == 143
    assert capsys.readouterr().err.strip() == (
        "apprentice: interrupted: stopped by SIGTERM at step 5; continue with --resume")


def test_overrides_may_follow_flags(monkeypatch, tmp_path):
    import apprentice.cli.app as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", str(SMOKE), "optim.lr=0.2", "--overwrite", "train.epochs=2", "--resume"]) == 0
    assert seen["overrides"] == ["optim.lr=0.2", "train.epochs=2"]
    assert seen["overwrite"] and seen["resume"]


# -- end to end: train the smoke config, then every other subcommand on its outputs -------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "smoke"
    proc = run_cli("train", str(SMOKE), f"train.out={out}", "data.limit=256")
    assert proc.returncode == 0, proc.stderr
    assert f"done: {out}" in proc.stdout
    assert (out / "summary.json").is_file() and (out / "checkpoints" / "last.pt").is_file()
    return out


def test_train_nonfinite_loss_exits_1(tmp_path):
    proc = run_cli("train", str(SMOKE), f"train.out={tmp_path / 'nan'}", "data.limit=256", "optim.lr=1e30")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("apprentice: error: ") and "non-finite" in last
    assert "Traceback" not in proc.stderr


def test_train_refuses_existing_run(smoke_run, capsys):
    assert main(["train", str(SMOKE), f"train.out={smoke_run}", "data.limit=256"]) == 2
    assert str(smoke_run) in one_error_line(capsys.readouterr().err)


def test_eval_run_and_checkpoint(smoke_run, capsys):
    assert main(["eval", str(smoke_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 512 and result["split"] == "test" and 0 <= result["top1"] <= 100
    summary = json.loads((smoke_run / "summary.json").read_text())
    ckpt = smoke_run / "checkpoints" / "best.pt"
    assert main(["eval", str(ckpt), "--batch-size", "100"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "(512 images)" in out
    # The best checkpoint is the one whose accuracy the summary reports.
    assert f"top-1 {summary['best_top1']:.2f} %" in out


def test_info_run(smoke_run, capsys):
    assert main(["info", str(smoke_run)]) == 0
    out = capsys.readouterr().out
    assert "model: resnet8" in out and "precision: 2W/8A" in out and "scheme: baseline" in out
    assert "parameters:" in out and "accuracy: final top-1" in out
    summary = json.loads((smoke_run / "summary.json").read_text())  # the smoke run has no holdout
    assert f"best.pt top-1 {summary['final_top1']:.2f} % (epoch {summary['epochs']}: the last epoch)" in out
    assert "layer1.0.conv1" in out and "ternary 2-bit" in out and "8-bit clip 1" in out
    assert "whole model:" in out  # the export size table


def test_export_packed_then_eval_and_info(smoke_run, tmp_path, capsys):
    packed = tmp_path / "smoke.safetensors"
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(packed)]) == 0
    assert packed.is_file() and f"wrote {packed}" in capsys.readouterr().out
    assert main(["eval", str(smoke_run), "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(packed), "--json"]) == 0
    from_packed = json.loads(capsys.readouterr().out)
    assert from_packed["kind"] == "packed" and from_packed["images"] == from_run["images"]
    assert abs(from_packed["top1"] - from_run["top1"]) < 0.5  # same model up to float rounding
    assert main(["info", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "(packed)" in out and "ternary 2-bit (base3)" in out and "packed tensors:" in out
    assert main(["export", str(packed), "--format", "packed", "--out", str(tmp_path / "again")]) == 2
    assert "already a packed file" in capsys.readouterr().err


def test_export_2bit_and_fold_bn(smoke_run, tmp_path, capsys):
    from apprentice.export import read_packed

    paths = {name: tmp_path / f"{name}.safetensors" for name in ("base3", "2bit", "folded")}
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(paths["base3"])]) == 0
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(paths["2bit"]),
                 "--ternary-packing", "2bit"]) == 0
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(paths["folded"]), "--fold-bn"]) == 0
    tensors = {name: read_packed(p)[0] for name, p in paths.items()}
    codes = {name: sum(t.nbytes for k, t in ts.items() if k.endswith("weight_codes")) for name, ts in tensors.items()}
    assert codes["base3"] < codes["2bit"]  # 5 trits a byte beat 4 two-bit codes a byte
    assert not any("bn" in k for k in tensors["folded"]) and any("bn" in k for k in tensors["base3"])
    capsys.readouterr()
    results = []
    for p in paths.values():
        assert main(["eval", str(p), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out)["top1"])
    assert max(results) - min(results) < 0.5


def test_export_onnx(smoke_run, tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "smoke.onnx"
    assert main(["export", str(smoke_run), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "onnx" in text and "QDQ graph: the model was not trained with quant.deploy=int8" in text


def test_export_onnx_of_a_deployable_run_is_the_int8_graph(tmp_path, capsys):
    """A run trained with quant.deploy=int8: `export --format onnx` writes the integer graph and says
    which layers stay float and why; a run without it gets the QDQ graph and is told why."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "deploy"
    proc = run_cli("train", str(SMOKE), f"train.out={out}", "data.limit=128", "quant.deploy=int8")
    assert proc.returncode == 0, proc.stderr
    assert "deployable int8" in proc.stderr  # the run header
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "d.onnx")]) == 0
    text = capsys.readouterr().out
    assert "int8 graph: 6 of 6 quantized layers run as integer kernels in ONNX Runtime" in text
    assert "float: conv1: not quantized (kept float by the recipe's exclude or layers)" in text
    assert "6 QLinearConv, 3 QLinearAdd, 1 Conv, 1 Gemm; float: conv1, fc" in text
    assert main(["export", str(out), "--format", "onnx", "--onnx-mode", "qdq", "--out", str(tmp_path / "q.onnx")]) == 2
    assert "trained deployable (quant.deploy=int8); its quantized adds are exported by mode 'int8'" in capsys.readouterr().err


def test_export_onnx_passes_fold_bn(smoke_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    ops = {}
    for name, flags in (("plain", []), ("folded", ["--fold-bn"])):
        out = tmp_path / f"{name}.onnx"
        assert main(["export", str(smoke_run), "--format", "onnx", "--out", str(out), *flags]) == 0
        ops[name] = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "BatchNormalization" in ops["plain"] and "BatchNormalization" not in ops["folded"]


def test_compare(smoke_run, tmp_path, capsys):
    packed = tmp_path / "smoke.safetensors"
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(packed)]) == 0
    capsys.readouterr()
    assert main(["compare", str(smoke_run), str(packed)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["run", "model", "precision", "scheme", "teacher"]
    assert str(smoke_run) in out and "resnet8" in out and "2W/8A" in out
    assert main(["compare", str(smoke_run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert rows[0]["best_top1"] == summary["best_top1"] and rows[0]["ratio"] > 1


def test_packed_fp32_size_comes_from_the_map_also_when_bn_was_folded(smoke_run, tmp_path, capsys):
    from safetensors.torch import save_file

    from apprentice.export import MAP_KEY, read_packed

    plain, folded, old = (tmp_path / f"{n}.safetensors" for n in ("plain", "folded", "old"))
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(plain)]) == 0
    assert main(["export", str(smoke_run), "--format", "packed", "--out", str(folded), "--fold-bn"]) == 0
    tensors, qmap = read_packed(plain)
    del qmap["fp32_bytes"]  # a file written before the map recorded the float size
    save_file(tensors, str(old), metadata={"format": "pt", MAP_KEY: json.dumps(qmap)})
    capsys.readouterr()
    assert main(["compare", str(smoke_run), str(plain), str(folded), str(old), "--json"]) == 0
    run, *packed = json.loads(capsys.readouterr().out)
    assert [r["fp32_mb"] for r in packed] == [run["fp32_mb"]] * 3  # folding BN does not shrink the FP32 model
    assert packed[1]["packed_mb"] < packed[0]["packed_mb"]


def test_eval_of_a_model_with_fewer_than_five_classes(tmp_path, capsys, image_folder):
    from apprentice.config import load_config
    from apprentice.run.loop import fit

    out = tmp_path / "run"
    fit(load_config(None, ["model.name=resnet18", "model.width=0.125", "model.small_input=true",
                           "data.name=imagenet", f"data.dir={image_folder}", "data.image_size=16",
                           "data.workers=0", "data.batch_size=4", "data.eval_batch_size=4", "train.epochs=1",
                           "train.device=cpu", f"train.out={out}"]))
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and result["top5"] is None and 0 <= result["top1"] <= 100
    assert main(["eval", str(out), "--batch-size", "2"]) == 0
    assert "top-5 - %" in capsys.readouterr().out


def test_table_right_aligns_numbers_with_thousands_separators():
    from apprentice.cli.commands import _table

    text = _table([["conv1", "2,304", "-1.5", "12.3%", "4.0x"], ["layer1.0.conv1", "36", "10", "9%", "12.5x"]],
                  ["layer", "params", "delta", "share", "ratio"])
    assert text.splitlines()[2:] == ["conv1            2,304   -1.5  12.3%   4.0x",
                                     "layer1.0.conv1      36     10     9%  12.5x"]


def test_mixed_precision_recipe_trains_exports_and_reloads_equal(tmp_path, capsys):
    """quant.layers: the first conv at 8-bit weights, stage 3 at 4 bits, the rest ternary with LSQ
    8-bit activations; `info` shows each layer's precision; the packed reload equals the run."""
    import torch

    from apprentice.export import load_packed
    from apprentice.run.runs import load_run

    out, packed = tmp_path / "mixed", tmp_path / "mixed.safetensors"
    rules = "quant.layers={conv1: 8W/32A, 'layer3.*': 4W/8A, '*': 2W/8A}"
    proc = run_cli("train", str(SMOKE), f"train.out={out}", "data.limit=256", "quant.quantizer=lsq", rules)
    assert proc.returncode == 0, proc.stderr
    assert main(["info", str(out)]) == 0
    rows = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("conv1 ", "layer1.0.conv1 ", "layer3.0.conv1 ", "fc "))}
    assert rows == {"conv1": "8W/32A", "layer1.0.conv1": "2W/8A", "layer3.0.conv1": "4W/8A", "fc": "32W/32A"}
    assert main(["export", str(out), "--format", "packed", "--out", str(packed)]) == 0
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(load_packed(packed)(x), load_run(out).model(x), rtol=1e-5, atol=1e-5)
