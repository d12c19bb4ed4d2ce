"""Tests of apprentice.export.tflite: a deployable student's LiteRT model runs every quantized conv and
add as an int8 kernel and computes, in the LiteRT interpreter, what the student computes."""

from __future__ import annotations

import pytest
import torch
from test_int8_onnx import _deployable

from apprentice.errors import ApprenticeError
from apprentice.export.tflite import (
    LiteRTModel,
    export_litert,
    read_metadata,
    with_metadata,
)
from apprentice.quant import QAdd, QConv2d

pytest.importorskip("litert_torch")

CASES = [("resnet8", {"shortcut": "A"}), ("sepnet", {"channels": 8})]


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_every_quantized_conv_and_add_is_an_int8_kernel_and_the_model_equals_the_student(tmp_path, user_models,
                                                                                        name, kwargs) -> None:
    model = _deployable(name, kwargs, 16)
    qmap = export_litert(model, tmp_path / "m.tflite", input_shape=(1, 16, 16), metadata={"classes": list("abcdefghij")})
    convs = [n for n, m in model.named_modules() if isinstance(m, QConv2d)]
    adds = [m for m in model.modules() if isinstance(m, QAdd)]
    assert sorted(qmap["litert"]["layers"]["int8"]) == sorted(convs) and qmap["litert"]["layers"]["float"] == []
    ops = qmap["litert"]["ops"]
    assert ops["int8"].get("CONV_2D", 0) + ops["int8"].get("DEPTHWISE_CONV_2D", 0) == len(convs)
    assert ops["int8"].get("ADD", 0) == len(adds)
    assert sum(ops["float"].values()) == 2  # the float stem (a 1-channel conv: LiteRT writes it depthwise) and fc
    lite = LiteRTModel(tmp_path / "m.tflite")
    assert lite.metadata["classes"] == list("abcdefghij") and lite.metadata["apprentice"]["deploy"] == "int8"
    x = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), lite(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.998  # as for ExecuTorch (test_pte.py)
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_metadata_is_replaced_not_repeated(tmp_path) -> None:
    model = _deployable("resnet8", {"shortcut": "A"}, 8)
    export_litert(model, tmp_path / "m.tflite", input_shape=(1, 8, 8), metadata={"v": 1})
    data = (tmp_path / "m.tflite").read_bytes()
    again = with_metadata(data, "apprentice", '{"v": 2}')
    assert read_metadata(again, "apprentice") == '{"v": 2}' and read_metadata(again, "other") is None


def test_a_missing_or_unreadable_file_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ApprenticeError, match=r"LiteRT file .* does not exist"):
        LiteRTModel(tmp_path / "none.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"not a model at all, not even close")
    with pytest.raises(ApprenticeError, match=r"is not a loadable LiteRT model"):
        LiteRTModel(tmp_path / "bad.tflite")


def test_a_missing_extra_is_named_and_nothing_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "litert_torch", None)  # as if not installed
    with pytest.raises(ApprenticeError, match=r"pip install 'apprentice-kd\[litert\]'"):
        export_litert(_deployable("resnet8", {"shortcut": "A"}, 8), tmp_path / "m.tflite", input_shape=(1, 8, 8))
    assert not (tmp_path / "m.tflite").exists()
