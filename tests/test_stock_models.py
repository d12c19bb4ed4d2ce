"""Tests of apprentice.stock_models: timm and torchvision networks by name (the extras CI installs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apprentice import stock_models
from apprentice.config import load_config
from apprentice.errors import ApprenticeError
from apprentice.export import save_packed
from apprentice.models import build_model
from apprentice.quant import prepare
from apprentice.run.loop import fit
from apprentice.run.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tests" / "torchvision_shim.py"
NAMES = ["timm:mobilenetv3_small_050", "torchvision:mobilenet_v3_small", "torchvision:resnet18"]


def _needs(name: str) -> None:
    pytest.importorskip(name.partition(":")[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_stock_network_takes_the_datas_channels_and_classes_and_rebuilds_from_its_arch(name):
    _needs(name)
    torch.manual_seed(0)
    net = build_model(name, num_classes=7, in_channels=1)
    assert net.arch == {"name": name, "num_classes": 7, "in_channels": 1}
    assert net.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    again = build_model(**net.arch)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", NAMES[:2])
def test_a_stock_network_is_quantized_with_per_channel_weight_scales(name):
    _needs(name)
    plan = prepare(build_model(name, num_classes=10, in_channels=1), "4W/8A")
    assert len(plan) > 10 and all(p.weights.per_channel for p in plan.values())


def test_a_stock_network_trains_exports_and_reloads_in_a_fresh_process_with_no_file_of_ones_own(tmp_path):
    _needs("torchvision:")
    out = tmp_path / "run"
    fit(load_config(None, ["model.name=torchvision:mobilenet_v3_small", "quant.precision=4W/8A", "data.name=synthetic",
                           "data.download=false", "data.limit=64", "data.batch_size=32", "train.epochs=1",
                           "train.device=cpu", f"train.out={out}"]))
    run = load_run(out)
    assert run.model.arch["name"] == "torchvision:mobilenet_v3_small"
    packed = tmp_path / "net.safetensors"
    save_packed(run.model, packed)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    code = ("import json, sys, torch; import apprentice; sys.path.insert(0, sys.argv[3]); import torchvision_shim; "
            "m = apprentice.load_packed(sys.argv[1]).eval(); x = torch.load(sys.argv[2]); "
            "print(json.dumps(m(x).tolist()))")
    proc = subprocess.run([sys.executable, "-c", code, str(packed), str(tmp_path / "x.pt"), str(SHIM.parent)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        expected = run.model.eval()(x)
    torch.testing.assert_close(torch.tensor(json.loads(proc.stdout)), expected, rtol=1e-5, atol=1e-5)


def test_width_is_not_passed_to_a_stock_network_unless_set():
    _needs("timm:")
    from apprentice.config.schema import ModelConfig
    from apprentice.run.teacher import model_arguments

    assert "width" not in model_arguments(ModelConfig(name="timm:mobilenetv3_small_050"), num_classes=3, in_channels=1)


@pytest.mark.parametrize("name, words", [
    ("tv:resnet18", "unknown model source 'tv'; choose from ['timm', 'torchvision']"),
    ("timm:no_such_net", "unknown model 'timm:no_such_net': timm has no model 'no_such_net'"),
    ("torchvision:no_such_net", "unknown model 'torchvision:no_such_net': torchvision has no model 'no_such_net'"),
])
def test_unknown_stock_names_are_one_line(name, words):
    if name.partition(":")[0] in stock_models.STOCK_SOURCES:
        _needs(name)
    with pytest.raises(ApprenticeError, match=words.replace("(", r"\(").replace("[", r"\[")):
        build_model(name, num_classes=10, in_channels=1)


@pytest.mark.parametrize("fault, words", [
    (ModuleNotFoundError("No module named 'timm'", name="timm"), "needs timm, an optional extra: pip install 'apprentice-kd[timm]'"),
    (RuntimeError("operator torchvision::nms does not exist"),
     ("timm is installed but cannot be imported (RuntimeError: operator torchvision::nms does not exist); "
      "install the torchvision built for torch")),
])
def test_a_missing_or_broken_package_is_named_in_one_line(monkeypatch, fault, words):
    def fail(package):
        raise fault

    monkeypatch.setattr(stock_models.importlib, "import_module", fail)
    with pytest.raises(ApprenticeError) as e:
        build_model("timm:efficientnet_b0", num_classes=10, in_channels=1)
    assert str(e.value).startswith("model 'timm:efficientnet_b0'") and words in str(e.value)
