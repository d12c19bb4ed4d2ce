"""What a file given to a command is, and where a command may write.

A command that reads float weights (a teacher, scheme C's student init) refuses a packed export,
an ONNX file or a teacher cache by name (`check_kind`), which it recognises by content
(`file_kind`), not by suffix; and no command writes where it reads (`check_output_apart`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from apprentice.data.teacher_cache import FORMAT as CACHE_FORMAT
from apprentice.errors import ApprenticeError
from apprentice.export import MAP_KEY

__all__ = [
    "FILE_KINDS",
    "NOT_WEIGHTS",
    "check_kind",
    "check_output_apart",
    "file_kind",
    "is_packed_export",
    "is_packed_file",
]


def is_packed_file(path: Path) -> bool:
    """A packed model is a safetensors file: 8-byte header length, then a JSON header (``{``)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _safetensors_metadata(path: Path) -> dict | None:
    """The ``__metadata__`` of a safetensors file's header ({} if none); None if ``path`` is not one."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 1 << 26 else None
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def is_packed_export(path: Path) -> bool:
    """Whether ``path`` is a packed file written by apprentice (its safetensors header has our map)."""
    return MAP_KEY in (_safetensors_metadata(path) or {})


# Files that are not a model's float weights, by what an error calls them (`file_kind`).
FILE_KINDS = {
    "packed": "a packed export (apprentice export --format packed: quantized integer codes)",
    "onnx": "an ONNX export (apprentice export --format onnx)",
    "executorch": "an ExecuTorch export (apprentice export --format executorch)",
    "litert": "a LiteRT export (apprentice export --format litert)",
    "cache": "a teacher cache (apprentice cache-teacher: a teacher's stored logits)",
    "safetensors": "a safetensors file that is neither a teacher cache nor a packed export",
}


def file_kind(path: str | os.PathLike) -> str | None:
    """Which of `FILE_KINDS` the file ``path`` is: by its header (the runtimes' files: by their names'
    `RUNTIME_SUFFIXES`); else None.

    Example:
        >>> file_kind("student.safetensors")   # written by apprentice export --format packed
        'packed'
    """
    p = Path(path)
    if not p.is_file():
        return None
    meta = _safetensors_metadata(p)
    if meta is not None:
        return "packed" if MAP_KEY in meta else "cache" if meta.get("format") == CACHE_FORMAT else "safetensors"
    return RUNTIME_SUFFIXES.get(p.suffix.lower())


#: The runtimes' files, by name: ``.onnx``, ``.pte``, ``.tflite``.
RUNTIME_SUFFIXES = {".onnx": "onnx", ".pte": "executorch", ".tflite": "litert"}


def check_kind(path: str, key: str, refused: tuple[str, ...], need: str) -> None:
    """Refuse ``path`` (given as ``key``) when it is one of the ``refused`` kinds, naming what it is."""
    kind = file_kind(path)
    if kind not in refused:
        return
    source = None
    if kind == "packed":  # the map records what it was exported from: point there
        with contextlib.suppress(Exception):
            source = json.loads((_safetensors_metadata(Path(path)) or {})[MAP_KEY])["metadata"]["source"]
    where = f" (this one was exported from {source!r})" if isinstance(source, str) else ""
    raise ApprenticeError(f"{key + ' ' if key else ''}{path!r} is {FILE_KINDS[kind]}; {need}{where}")


NOT_WEIGHTS = ("packed", "onnx", "executorch", "litert", "cache")  # never a teacher's or an init's weights


def check_output_apart(out: str | os.PathLike, option: str, reads: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is, or is a folder holding, a file or folder the same command reads.

    A student trained with ``train.out`` set to its teacher's run folder would replace the teacher's
    checkpoints with its own (silently, with ``--overwrite``); an export or a cache written over the
    checkpoint it reads destroys its own source. Paths are compared once symbolic links and ``..``
    are resolved, so another spelling of the same place is caught too. Call it before anything is
    created or cleared: ``fit`` (train), ``apprentice export`` and ``apprentice cache-teacher`` do.

    Args:
        out: the folder or file the command writes (``train.out``, ``--out``).
        option: how the message names ``out``.
        reads: ``{how the message names it: path}`` of what the command reads; None: nothing.

    Raises:
        ApprenticeError: ``out`` is one of ``reads``, or a folder holding one.
    """
    target = Path(out).resolve()
    for name, path in reads.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if source != target and target not in source.parents:
            continue
        same = os.path.normpath(out) == os.path.normpath(path)
        how = "holds" if source != target else "is" if same else "is (once links and '..' are resolved)"
        raise ApprenticeError(f"{option} {str(out)!r} {how} {name} {str(path)!r}; a command never writes where "
                              f"it reads (it could replace what it is made from): choose another {option}")
