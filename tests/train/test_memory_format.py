"""apprentice.train.layout: channels-last for a model, the strided 1x1 convolutions with few inputs kept NCHW."""

from __future__ import annotations

import subprocess
import sys

import torch

import apprentice as ap
from apprentice.train.layout import kept_nchw, to_memory_format


def _narrow() -> torch.nn.Module:  # projection shortcuts reading 4 and 8 channels: the first is kept NCHW
    return ap.build_model("resnet8", num_classes=10, in_channels=1, width=0.25, shortcut="B")


def test_the_strided_1x1_convolutions_with_fewer_than_8_inputs_stay_nchw_and_compute_the_same():
    model = _narrow()
    assert kept_nchw(model) == ["layer2.0.downsample.0"]  # layer3's projection reads 8 channels
    reference = _narrow()
    reference.load_state_dict(model.state_dict())
    kept = to_memory_format(model, torch.device("cpu"), channels_last=True)
    modules = dict(model.named_modules())
    assert kept == ["layer2.0.downsample.0"] and modules[kept[0]].weight.is_contiguous()
    assert modules["layer3.0.downsample.0"].weight.is_contiguous(memory_format=torch.channels_last)
    assert modules["layer1.0.conv1"].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x.contiguous(memory_format=torch.channels_last)), reference.eval()(x))
    assert to_memory_format(_narrow(), torch.device("cpu"), channels_last=False) == []


def test_a_narrow_projection_trains_in_channels_last(tmp_path):
    """In a process of its own: on AVX2 CPUs the unguarded layer corrupts the heap (a crash, not an error)."""
    script = tmp_path / "step.py"
    script.write_text(
        "import torch, apprentice as ap\n"
        "from apprentice.train.layout import to_memory_format\n"
        "torch.manual_seed(0); torch.set_num_threads(1)\n"
        "m = ap.build_model('resnet8', num_classes=10, in_channels=1, width=0.25, shortcut='B')\n"
        "ap.prepare(m, '2W/8A')\n"
        "to_memory_format(m, torch.device('cpu'), channels_last=True)\n"
        "x = torch.randn(32, 1, 28, 28).contiguous(memory_format=torch.channels_last)\n"
        "for _ in range(5):\n"
        "    torch.nn.functional.cross_entropy(m(x), torch.arange(32) % 10).backward()\n"
        "print('trained', all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "trained True", (done.returncode, done.stderr[-500:])
