"""``apprentice predict``: the class a trained model sees in image files, with the model's own preprocessing.

A model is a run folder, a checkpoint, a packed file or an ONNX, ExecuTorch or LiteRT export. Each records how its images
were prepared (`apprentice.data.Preprocess`: channels, image size, the evaluation resize and centre crop, mean and
std, class names): a run in its config (a folder's computed facts are written there when it
trains), an export in its metadata (``"preprocess"`` and ``"classes"``). Images are decoded exactly
as the evaluation images of an image folder were (`apprentice.data.images`), so a prediction on a
file of the validation folder is the one ``apprentice eval`` counted.

An image that cannot be read gets one error line and the others are still predicted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apprentice.data import Preprocess, normalize
from apprentice.errors import ApprenticeError

__all__ = ["Prediction", "Predictor", "load_predictor", "predict"]


@dataclass
class Predictor:
    """A loaded model with its preprocessing: ``run(float N×C×S×S normalised) -> logits N×classes``."""

    path: Path
    kind: str  # "run", "checkpoint", "packed", "onnx", "executorch" or "litert"
    preprocess: Preprocess
    run: Callable[[Tensor], Tensor]


@dataclass
class Prediction:
    """One image's answer: ``top`` as (class name, class index, probability), best first; or ``error``."""

    image: str
    top: list[tuple[str, int, float]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top": [{"class": c, "index": i, "probability": p} for c, i, p in self.top]}


def load_predictor(path_text: str, *, device: str | torch.device = "cpu") -> Predictor:
    """A run folder, checkpoint or packed file (by content), or an ONNX, ExecuTorch or LiteRT export (``.onnx``,
    ``.pte``, ``.tflite``), ready to predict."""
    path = Path(path_text)
    if path.suffix.lower() == ".onnx":
        return _onnx_predictor(path)
    from apprentice.run.runs import load_model_file

    loaded = load_model_file(path_text, runtimes=True)
    num_classes = int(getattr(loaded.model, "arch", {}).get("num_classes", 0))
    meta = ((loaded.qmap or {}).get("metadata") or {}) if loaded.kind == "packed" else {}
    if loaded.kind in ("executorch", "litert"):
        meta = loaded.model.metadata
    if isinstance(meta, dict) and "preprocess" in meta:
        pre = Preprocess.from_metadata(meta["preprocess"], meta.get("classes"), repr(path_text))
    elif loaded.config is not None:
        from apprentice.run.build import preprocess_from_config

        pre = preprocess_from_config(loaded.config, num_classes)
    else:
        raise ApprenticeError(f"{path_text!r} records neither its preprocessing nor its training config; "
                              f"export it again from its run folder")
    model = loaded.model.to(device).eval()

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x.to(device)).float().cpu()

    return Predictor(path, loaded.kind, pre, run)


def _onnx_predictor(path: Path) -> Predictor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ApprenticeError("predicting with an ONNX file needs the optional extra: pip install "
                              "'apprentice-kd[onnx]'") from None
    if not path.is_file():
        raise ApprenticeError(f"ONNX file {str(path)!r} does not exist")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types for bad files
        raise ApprenticeError(f"{str(path)!r} is not a readable ONNX model: {str(e).splitlines()[0]}") from None
    props = session.get_modelmeta().custom_metadata_map
    if "preprocess" not in props:
        raise ApprenticeError(f"{str(path)!r} records no preprocessing (exported before apprentice recorded it); "
                              f"export it again with apprentice export --format onnx")
    try:
        pre = Preprocess.from_metadata(json.loads(props["preprocess"]), json.loads(props.get("classes", "null")),
                                       repr(str(path)))
    except json.JSONDecodeError as e:
        raise ApprenticeError(f"{str(path)!r}: its recorded preprocessing is not JSON ({e})") from None
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()

    return Predictor(path, "onnx", pre, run)


def predict(predictor: Predictor, images: Sequence[str | Path], *, top_k: int = 1, batch_size: int = 64,
            on_error: Callable[[Prediction], None] | None = None) -> list[Prediction]:
    """The ``top_k`` classes and probabilities of every image, in the given order.

    An image that cannot be read gets a `Prediction` with ``error`` (and ``on_error`` is called
    with it at once); the others are predicted all the same.
    """
    pre, out = predictor.preprocess, []
    k = max(1, min(top_k, len(pre.classes)))
    for start in range(0, len(images), batch_size):
        chunk, inputs, slots = images[start:start + batch_size], [], []
        for path in chunk:
            try:
                inputs.append(pre.image(path))
                slots.append(len(out))
                out.append(Prediction(str(path)))
            except ApprenticeError as e:
                out.append(Prediction(str(path), error=str(e)))
                if on_error is not None:
                    on_error(out[-1])
        if not inputs:
            continue
        probs = predictor.run(normalize(torch.stack(inputs), pre.mean, pre.std)).softmax(1)
        values, index = probs.topk(k, dim=1)
        for slot, v, i in zip(slots, values.tolist(), index.tolist()):
            out[slot].top = [(pre.classes[c], c, p) for c, p in zip(i, v)]
    return out
