"""``apprentice predict``: the class a trained model sees in image files, with the model's own preprocessing.

A model is a run folder, a checkpoint, a packed file or an ONNX file. Each records how its images
were prepared (`Preprocess`: channels, image size, the evaluation resize and centre crop, mean and
std, class names): a run in its config (a folder's computed facts are written there when it
trains), an export in its metadata (``"preprocess"`` and ``"classes"``). Images are decoded exactly
as the evaluation images of an image folder were (`apprentice.data.images`), so a prediction on a
file of the validation folder is the one ``apprentice eval`` counted.

An image that cannot be read gets one error line and the others are still predicted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apprentice.config_schema import Config
from apprentice.data import DATASETS, eval_resize, normalize
from apprentice.data.images import center_tensor, read_image
from apprentice.errors import ApprenticeError

__all__ = ["Prediction", "Predictor", "Preprocess", "load_predictor", "predict"]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model's input, and what its outputs are called.

    Attributes:
        channels: 1 (greyscale) or 3 (RGB).
        image_size: side of the square the model sees.
        resize: the shorter side is resized to this before the centre ``image_size`` crop.
        mean, std: per-channel normalisation on the [0, 1] scale.
        classes: class names in output order.
    """

    channels: int
    image_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def to_metadata(self) -> dict[str, Any]:
        """``{"preprocess": {...}, "classes": [...]}``: what an export records (JSON values)."""
        return {"preprocess": {"channels": self.channels, "image_size": self.image_size, "resize": self.resize,
                               "mean": list(self.mean), "std": list(self.std)}, "classes": list(self.classes)}

    @classmethod
    def from_metadata(cls, preprocess: Any, classes: Any, where: str) -> Preprocess:
        """Read back `to_metadata` (from an export's metadata; checked, never trusted)."""
        try:
            p = cls(int(preprocess["channels"]), int(preprocess["image_size"]), int(preprocess["resize"]),
                    tuple(float(v) for v in preprocess["mean"]), tuple(float(v) for v in preprocess["std"]),
                    tuple(str(c) for c in classes))
        except (TypeError, KeyError, ValueError) as e:
            raise ApprenticeError(f"{where}: its recorded preprocessing is malformed ({type(e).__name__}: {e})") from None
        ok = p.channels in (1, 3) and p.image_size > 0 and p.resize >= p.image_size and p.classes
        ok = ok and len(p.mean) == len(p.std) == p.channels and all(math.isfinite(v) and v > 0 for v in p.std)
        if not ok:
            raise ApprenticeError(f"{where}: its recorded preprocessing is inconsistent: {preprocess}, {len(p.classes)} classes")
        return p

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> Preprocess:
        """The preprocessing a run's config records (a folder's facts were written there by training);
        values left null come from the data set's table row. Touches no data file."""
        d, info = cfg.data, DATASETS.get(cfg.data.name)
        if info is None:
            raise ApprenticeError(f"the run's data set {cfg.data.name!r} is unknown to this version of apprentice")
        own = info.kind in ("folder", "npz")  # other sets' sizes are the table's (old configs say 224 for all)
        size, channels = (d.image_size or info.image_size, d.channels or info.channels) if own else (
            info.image_size, info.channels)
        classes = d.classes or info.classes or tuple(str(i) for i in range(num_classes))
        p = cls(channels, size, eval_resize(d.augmentation or info.augmentation, size) if size else 0,
                tuple(d.mean or info.mean), tuple(d.std or info.std), tuple(classes))
        if not (p.channels and p.image_size and p.mean and p.std):
            raise ApprenticeError(f"the run's config does not record how its {cfg.data.name} images were prepared "
                                  f"(trained before apprentice recorded it); set data.channels, data.image_size, "
                                  f"data.mean and data.std in it")
        if len(p.classes) != num_classes:
            raise ApprenticeError(f"the run records {len(p.classes)} class names but the model predicts {num_classes}")
        return p

    def image(self, path: str | Path) -> Tensor:
        """Image file ``path`` as the model's uint8 input C×S×S (ApprenticeError naming an unreadable file)."""
        return center_tensor(read_image(path, self.channels), size=self.image_size, resize=self.resize)


@dataclass
class Predictor:
    """A loaded model with its preprocessing: ``run(float N×C×S×S normalised) -> logits N×classes``."""

    path: Path
    kind: str  # "run", "checkpoint", "packed" or "onnx"
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
    """A run folder, checkpoint or packed file (by content), or an ONNX file (``.onnx``), ready to predict."""
    path = Path(path_text)
    if path.suffix.lower() == ".onnx":
        return _onnx_predictor(path)
    from apprentice.runs import load_model_file

    loaded = load_model_file(path_text)
    num_classes = int(getattr(loaded.model, "arch", {}).get("num_classes", 0))
    meta = ((loaded.qmap or {}).get("metadata") or {}) if loaded.kind == "packed" else {}
    if isinstance(meta, dict) and "preprocess" in meta:
        pre = Preprocess.from_metadata(meta["preprocess"], meta.get("classes"), repr(path_text))
    elif loaded.config is not None:
        pre = Preprocess.from_config(loaded.config, num_classes)
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
