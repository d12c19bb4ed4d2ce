"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed.

``os.replace`` is atomic on POSIX and Windows, so a crash, ``kill -9`` or a full disk leaves either
the old file or the new one, never half of one. What a kill can leave behind is the temporary
file itself (``.<name>.<random>.tmp``); `remove_stale_temps` deletes those when a run starts again.

Decisions:

- The new file gets the permissions an ordinary ``open(path, "w")`` would give it (``0o666`` less
  the umask), or keeps those of the file it replaces. ``tempfile.mkstemp`` alone would make every
  run file ``0600``, unreadable to colleagues on a shared machine.
- ``torch.save`` turns an error of the file it writes to into ``RuntimeError: unexpected pos``;
  the file object handed out here remembers the first ``OSError`` (``ENOSPC``: disk full) so that
  the error raised is the real one, naming the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["AtomicFile", "atomic_copy", "atomic_file", "atomic_write_bytes", "atomic_write_text",
           "new_file_mode", "remove_stale_temps"]

TEMP_SUFFIX = ".tmp"


def new_file_mode(path: str | os.PathLike) -> int:
    """The permission bits a rewrite of ``path`` should get: the current file's, else 0o666 & ~umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux says it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere reading it means setting it; put it straight back
    os.umask(umask)
    return umask


class AtomicFile:
    """The binary temp file `atomic_file` yields: ``write``/``flush``/``fileno``, and ``error``, the
    first OSError a write raised (kept even if a caller such as ``torch.save`` replaces it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()


def _with_filename(e: OSError, path: Path) -> OSError:
    if e.filename is not None or e.errno is None:
        return e
    return type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[AtomicFile]:
    """Yield a binary file that replaces ``path`` only if the block finishes without an error.

    Raises:
        OSError: the write, fsync or rename failed (disk full, permissions); it names ``path``,
            the temp file is removed and an existing ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with contextlib.suppress(OSError):  # e.g. a file system without permissions
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as raw:
            f = AtomicFile(raw)
            try:
                yield f
            except Exception as e:
                if f.error is not None and not isinstance(e, OSError):
                    raise f.error from e  # the disk's error, not torch's "unexpected pos"
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _with_filename(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself lives in the directory entry; fsync the folder so it survives a power
    # loss too (not possible on Windows, where opening a folder fails).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (``best.pt`` is a copy of the ``last.pt`` just written)."""
    with open(src, "rb") as s, atomic_file(dst) as d:
        shutil.copyfileobj(s, d, length=1 << 20)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.<name>.<random>.tmp``) that a killed writer left in ``folder``.

    Only call this when no other process writes into ``folder``. Returns what was removed.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for p in Path(folder).iterdir():
            if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed
