"""The tiny training run the tests share (train, faults, bad inputs, untrusted files): resnet8 at width
0.25 on 128 synthetic images."""

from __future__ import annotations

import json
import os
from pathlib import Path

from apprentice.config import Config, dump_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]

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


def records(run: Path, kind: str) -> list[dict]:
    """The lines of ``kind`` ("step", "epoch", ...) of a run's metrics.jsonl."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: one thread (so a busy machine moves a signal's step
    little), this checkout's apprentice, no inherited torchrun world."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    env.pop("WORLD_SIZE", None)
    return env
