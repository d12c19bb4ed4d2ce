"""Tests of apprentice.export.pte: a deployable student's ExecuTorch program runs every quantized conv as
an XNNPACK int8 kernel and computes, in ExecuTorch's runtime, what the student computes."""

from __future__ import annotations

import pytest
import torch
from test_int8_onnx import _deployable

from apprentice.errors import ApprenticeError
from apprentice.export.pte import ExecuTorchModel, export_executorch
from apprentice.models import ZeroPadShortcut
from apprentice.quant import QConv2d

pytest.importorskip("executorch")

# A tiny deployable ResNet (zero-pad shortcuts) and a depthwise user model (examples/my_models.py).
CASES = [("resnet8", {"shortcut": "A"}), ("sepnet", {"channels": 8})]


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_every_quantized_conv_is_an_int8_kernel_and_the_program_equals_the_student(tmp_path, user_models,
                                                                                    name, kwargs) -> None:
    model = _deployable(name, kwargs, 16)
    qmap = export_executorch(model, tmp_path / "m.pte", input_shape=(1, 16, 16), metadata={"classes": list("abcdefghij")})
    convs = [n for n, m in model.named_modules() if isinstance(m, QConv2d)]
    shortcuts = [n for n, m in model.named_modules() if isinstance(m, ZeroPadShortcut)]  # int8 1×1 convs here
    report = qmap["executorch"]
    assert sorted(report["delegated"]["int8"]) == sorted(convs + shortcuts)  # every quantized conv, by name
    assert len(report["delegated"]["float"]) == 2 and report["portable"] == {}  # the float stem and classifier
    # One XNNPACK call for the whole network: a shared dequantize (block input -> first conv and add) split
    # the partition at every block.
    assert report["delegate_calls"] == 1
    program = ExecuTorchModel(tmp_path / "m.pte")
    assert program.metadata["classes"] == list("abcdefghij") and program.metadata["apprentice"]["deploy"] == "int8"
    x = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), program(x)
    # The stated tolerance (docs/export.md): argmax agreement >= 99.9 % (here: at most one miss in 500 on a
    # random net, where codes on rounding ties pass their step on) and |Δlogit| <= 5 % of the largest logit.
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.998
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_a_quantized_classifier_runs_as_an_xnnpack_float_linear_and_equals_the_student(tmp_path) -> None:
    # Its logits are float (no int8 output): XNNPACK takes no int8 linear there, and with int8 constants
    # the partitioner left it to the portable kernels (a dequantize of its weights on every call).
    model = _deployable("resnet8", {"shortcut": "A"}, 16, layers=[("@last", "8W/8A")])
    report = export_executorch(model, tmp_path / "m.pte", input_shape=(1, 16, 16))["executorch"]
    assert report["portable"] == {} and report["delegated"]["float"] == ["conv1", "fc"]
    x = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = model(x), ExecuTorchModel(tmp_path / "m.pte")(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.995
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_a_missing_or_unreadable_file_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ApprenticeError, match=r"ExecuTorch file .* does not exist"):
        ExecuTorchModel(tmp_path / "none.pte")
    (tmp_path / "bad.pte").write_bytes(b"not a program")
    with pytest.raises(ApprenticeError, match=r"is not a loadable ExecuTorch program"):
        ExecuTorchModel(tmp_path / "bad.pte")


def test_a_missing_extra_is_named_and_nothing_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "executorch", None)  # as if not installed
    with pytest.raises(ApprenticeError, match=r"pip install 'apprentice-kd\[executorch\]'"):
        export_executorch(_deployable("resnet8", {"shortcut": "A"}, 8), tmp_path / "m.pte", input_shape=(1, 8, 8))
    assert not (tmp_path / "m.pte").exists()
