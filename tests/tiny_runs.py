"""The tiny training run the tests share (train, faults, bad inputs, untrusted files): resnet8 at width
0.25 on 128 synthetic images."""

from __future__ import annotations

from pathlib import Path

from apprentice.config import Config, dump_yaml, load_config

TINY = ["model.name=resnet8", "model.width=0.25", "data.name=synthetic", "data.download=false",
        "data.limit=128", "data.batch_size=32", "data.eval_batch_size=512", "train.epochs=1",
        "train.log_every=2", "train.device=cpu", "optim.lr=0.05"]


def tiny(out: Path, *extra: str) -> Config:
    """The tiny config writing to ``out``, with ``extra`` overrides."""
    return load_config(None, [*TINY, f"train.out={out}", *extra])


def recipe(path: Path, *extra: str) -> Path:
    """A recipe file holding the TINY settings plus ``extra`` (for the command line)."""
    path.write_text(dump_yaml(load_config(None, [*TINY, *extra])))
    return path
