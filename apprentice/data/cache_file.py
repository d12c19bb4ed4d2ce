"""The file behind a teacher cache: a safetensors file written in chunks, resumably, and read memory-mapped.

The layout is plain safetensors (8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw data), so any safetensors reader can open it
and reading it never runs code. Because every tensor's shape is known before the build starts, the
header is written first and the data region is filled in place, chunk by chunk:

- the work goes to ``.<name>.partial`` beside the target; a ``done`` tensor (one byte a chunk)
  is set only after that chunk's data has been flushed to disk, so a build killed at any moment
  continues on the next call with the chunks not yet marked (`PartialFile`);
- a partial file whose header differs from the one the new build would write (another teacher,
  data set or setting) is not continued but started again;
- the finished file is fsynced and renamed onto the target (atomic: the target is either the old
  file or the complete new one).

`MappedFile` reads the tensors as read-only ``numpy.memmap`` arrays: processes reading the same
file (torchrun ranks) share the operating system's page cache instead of each holding a copy, and
a batch's lookup reads only the rows it needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apprentice.atomic import new_file_mode
from apprentice.errors import ApprenticeError

__all__ = ["DTYPES", "Layout", "MappedFile", "PartialFile", "partial_path"]

# safetensors dtype names of the numpy dtypes a cache stores.
DTYPES: dict[str, np.dtype] = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "I16": np.dtype("<i2"),
                               "I32": np.dtype("<i4"), "U8": np.dtype("u1")}
_MAX_HEADER = 1 << 24  # a cache header is a few kB; refuse to parse a corrupt length


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data region
    end: int


@dataclass(frozen=True)
class Layout:
    """Tensor names, dtypes and shapes (in file order) plus string metadata: a whole file's header."""

    header: bytes
    entries: dict[str, Entry]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + len(self.header)

    @property
    def size(self) -> int:
        """Bytes of the whole file."""
        return self.data_start + max((e.end for e in self.entries.values()), default=0)

    @classmethod
    def make(cls, tensors: Mapping[str, tuple[str, tuple[int, ...]]], metadata: Mapping[str, str]) -> Layout:
        """The layout of ``{name: (safetensors dtype, shape)}`` stored in that order."""
        entries, offset = {}, 0
        for name, (dtype, shape) in tensors.items():
            nbytes = DTYPES[dtype].itemsize * int(np.prod(shape, dtype=np.int64))
            entries[name] = Entry(dtype, tuple(int(s) for s in shape), offset, offset + nbytes)
            offset += nbytes
        head: dict[str, Any] = {"__metadata__": dict(metadata)}
        head.update({n: {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
                     for n, e in entries.items()})
        text = json.dumps(head, separators=(",", ":")).encode("utf-8")
        text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned, as safetensors writes it
        return cls(text, entries, dict(metadata))

    @classmethod
    def read(cls, path: Path, what: str) -> Layout:
        """The layout in ``path``'s header; one-line errors for anything but a whole safetensors file."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                raw = f.read(8)
                n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
                if not 0 < n <= min(_MAX_HEADER, size - 8):
                    raise ApprenticeError(f"{what} {str(path)!r} is not a safetensors file (bad header length)")
                text = f.read(n)
        except OSError as e:
            raise ApprenticeError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
        try:
            head = json.loads(text)
            metadata = {str(k): str(v) for k, v in head.pop("__metadata__", {}).items()}
            entries = {k: Entry(v["dtype"], tuple(int(s) for s in v["shape"]), *map(int, v["data_offsets"]))
                       for k, v in head.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ApprenticeError(f"{what} {str(path)!r} has a corrupt safetensors header") from None
        layout = cls(text, entries, metadata)
        for name, e in entries.items():
            if e.dtype not in DTYPES or e.end - e.begin != DTYPES[e.dtype].itemsize * int(np.prod(e.shape)):
                raise ApprenticeError(f"{what} {str(path)!r}: tensor {name!r} has a dtype or size this "
                                      f"version does not read ({e.dtype} {list(e.shape)})")
        if layout.size != size:
            raise ApprenticeError(f"{what} {str(path)!r} is truncated or padded: {size} bytes, its header "
                                  f"says {layout.size}")
        return layout


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished build of ``path`` keeps its work: ``.<name>.partial`` beside it."""
    p = Path(path)
    return p.with_name(f".{p.name}.partial")


class PartialFile:
    """An unfinished cache file being filled chunk by chunk; reopening it continues the same build.

    Args:
        path: the target file (the work goes to `partial_path` of it).
        layout: the file to build; must hold a ``done`` U8 tensor with one byte per chunk.
    """

    def __init__(self, path: str | os.PathLike, layout: Layout) -> None:
        self.path, self.layout, self.tmp = Path(path), layout, partial_path(path)
        self.resumed = self._matches()
        if not self.resumed:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(self.tmp, "wb") as f:
                f.write(struct.pack("<Q", len(layout.header)) + layout.header)
                f.truncate(layout.size)  # sparse where the file system allows; filled chunk by chunk
            with contextlib.suppress(OSError):
                os.chmod(self.tmp, new_file_mode(self.path))
        self.file = open(self.tmp, "r+b")  # noqa: SIM115 - closed by finish() / close()
        self.done = self.read("done").copy()

    def _matches(self) -> bool:
        if not self.tmp.is_file():
            return False
        with contextlib.suppress(ApprenticeError):
            return Layout.read(self.tmp, "partial cache").header == self.layout.header
        return False

    def read(self, name: str) -> np.ndarray:
        e = self.layout.entries[name]
        return np.fromfile(self.tmp, dtype=DTYPES[e.dtype], count=int(np.prod(e.shape)),
                           offset=self.layout.data_start + e.begin).reshape(e.shape)

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` into tensor ``name`` from row ``start`` of its first dimension."""
        e = self.layout.entries[name]
        rows = np.ascontiguousarray(rows, dtype=DTYPES[e.dtype])
        if rows.shape[1:] != e.shape[1:] or not 0 <= start <= e.shape[0] - rows.shape[0]:
            raise ValueError(f"rows {rows.shape} at {start} do not fit {name} {e.shape}")
        row_bytes = DTYPES[e.dtype].itemsize * int(np.prod(e.shape[1:], dtype=np.int64))
        self.file.seek(self.layout.data_start + e.begin + start * row_bytes)
        self.file.write(rows.tobytes())

    def mark_done(self, chunk: int) -> None:
        """Record ``chunk`` as finished, after its data is on disk (so a crash never marks unwritten work)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done[chunk] = 1
        self.write_rows("done", chunk, self.done[chunk:chunk + 1])
        self.file.flush()

    def finish(self) -> None:
        """Rename the complete file onto the target atomically."""
        if not self.done.all():
            raise ValueError("finish() before every chunk is done")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        with contextlib.suppress(OSError):  # the rename lives in the folder entry: make it durable too
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Stop without finishing; the work so far stays for the next call."""
        self.file.close()


class MappedFile:
    """A finished cache file's tensors as read-only memory maps, created on first use.

    Pickling (DataLoader workers started with spawn) carries the path and layout, not the data;
    each process maps the file itself.
    """

    def __init__(self, path: str | os.PathLike, what: str = "teacher cache") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            unfinished = partial_path(self.path).is_file()  # a build stopped before its last chunk
            raise ApprenticeError(f"{what} {str(self.path)!r} does not exist"
                                  + (" (a folder)" if self.path.is_dir() else "")
                                  + (f"; its build was interrupted (the work so far is in "
                                     f"{str(partial_path(self.path))!r}): run apprentice cache-teacher again to "
                                     f"finish it" if unfinished else ""))
        self.layout = Layout.read(self.path, what)
        self._maps: dict[str, np.memmap] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._maps:
            e = self.layout.entries[name]
            self._maps[name] = np.memmap(self.path, dtype=DTYPES[e.dtype], mode="r",
                                         offset=self.layout.data_start + e.begin, shape=e.shape)
        return self._maps[name]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}
