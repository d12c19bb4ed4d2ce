"""Finding, downloading and reading the standard on-disk data formats: IDX (MNIST, Fashion-MNIST)
and the CIFAR python batches. Every file is validated; the CIFAR pickles are read with an
unpickler that can only rebuild numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import math
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch
from torch import Tensor

from apprentice.atomic import new_file_mode
from apprentice.data.catalog import DatasetInfo
from apprentice.errors import ApprenticeError


def cache_dir(name: str) -> Path:
    """Where downloads go: ``$APPRENTICE_CACHE/<name>``, else ``~/.cache/apprentice/<name>``."""
    root = os.environ.get("APPRENTICE_CACHE") or Path.home() / ".cache" / "apprentice"
    return Path(root) / name


# ---------------------------------------------------------------- finding and downloading files


def _folders(name: str, info: DatasetInfo, data_dir: str | None) -> list[Path]:
    bases = ([Path(data_dir)] if data_dir else []) + ([Path(info.system_dir)] if info.system_dir else [])
    bases.append(cache_dir(name))
    return [d for b in bases for d in ((b / info.subdir, b) if info.subdir else (b,))]


def _find(name: str, info: DatasetInfo, wanted: Sequence[str], data_dir: str | None,
          download: bool) -> list[Path]:
    """Paths of the ``wanted`` files (IDX names may also exist with .gz), downloading if allowed."""
    def search() -> list[Path] | None:
        for folder in _folders(name, info, data_dir):
            found = [next((p for p in (folder / w, folder / (w + ".gz"))[: 1 + (info.kind == "idx")]
                           if p.is_file()), None) for w in wanted]
            if all(found):
                return found  # type: ignore[return-value]
        return None

    found = search()
    if data_dir and not Path(data_dir).is_dir() and (found is not None or download):
        # A mistyped folder must not silently fall back to another copy (or a download).
        what = "is a file, not a folder" if Path(data_dir).exists() else "does not exist"
        raise ApprenticeError(f"data folder {data_dir!r} (data.dir or --data-dir) {what}")
    if found is None and download:
        _fetch(name, info)
        found = search()
    if found is None:
        places = ", ".join(str(f) for f in _folders(name, info, data_dir))
        raise ApprenticeError(f"{name} files {list(wanted)} not found (looked in {places}; "
                              f"download={download}); {info.hint}")
    return found


def _fetch(name: str, info: DatasetInfo) -> None:
    dest = cache_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    for file, md5 in info.files:
        if (dest / file).is_file():
            continue
        problems = []
        for mirror in info.mirrors:
            try:
                _download(mirror + file, dest / file, md5)
                break
            except (OSError, ApprenticeError) as e:  # URLError is an OSError
                problems.append(f"{mirror + file}: {e}")
        else:
            raise ApprenticeError(f"could not download {name}: {'; '.join(problems)}; {info.hint}")
    if info.subdir:
        archive = dest / info.files[0][0]
        _extract(archive, dest, info.subdir)
        archive.unlink()


def _download(url: str, path: Path, md5: str) -> None:
    """Fetch ``url`` to ``path`` through a temp file that is renamed only once the md5 matches, so an
    interrupted or corrupt download never looks like data."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    os.chmod(tmp, new_file_mode(path))  # mkstemp's 0600 would hide the data from other users
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=60) as response:
            total, done = int(response.headers.get("Content-Length") or 0), 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                of = f"/{total / 2**20:.1f}" if total else ""
                print(f"\rdownloading {url}: {done / 2**20:.1f}{of} MiB", end="", file=sys.stderr)
        print(file=sys.stderr)
        if digest.hexdigest() != md5:
            raise ApprenticeError(f"checksum mismatch: expected md5 {md5}, got {digest.hexdigest()}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _extract(archive: Path, dest: Path, subdir: str) -> None:
    """Unpack ``subdir`` of a tar archive into ``dest``. Every member is checked before anything is
    written: only plain files and folders whose paths stay inside ``dest`` (no links, devices,
    absolute paths or '..'); unpacking goes to a temp folder that is renamed at the end."""
    root = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = (root / m.name).resolve()
            if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or not target.is_relative_to(root):
                raise ApprenticeError(f"refusing to extract {m.name!r} from {archive}: "
                                      "not a plain file inside the archive folder")
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
        try:
            for m in members:
                target = tmp / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
            if not (tmp / subdir).is_dir():
                raise ApprenticeError(f"archive {archive} has no folder {subdir!r}")
            shutil.rmtree(dest / subdir, ignore_errors=True)  # an incomplete earlier copy
            os.replace(tmp / subdir, dest / subdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def _read_idx(path: Path, magic: int, dims: int) -> tuple[np.ndarray, tuple[int, ...]]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ApprenticeError(f"cannot read IDX file {path}: {e}") from None
    head = 4 + 4 * dims
    if len(raw) < head:
        raise ApprenticeError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ApprenticeError(f"IDX file {path} has magic number {found}; expected {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(raw) != head + math.prod(shape):
        what = "truncated" if len(raw) < head + math.prod(shape) else "too long"
        raise ApprenticeError(f"IDX file {path} is {what}: header says {shape} = {math.prod(shape)} "
                              f"bytes of data, file has {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape), shape


def load_idx(name: str, info: DatasetInfo, split: str, data_dir: str | None,
              download: bool) -> tuple[Tensor, Tensor]:
    stem = "train" if split == "train" else "t10k"
    image_path, label_path = _find(name, info, [f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte"],
                                   data_dir, download)
    images, shape = _read_idx(image_path, 2051, 3)
    if shape[1:] != (info.image_size, info.image_size):
        raise ApprenticeError(f"IDX file {image_path} holds {shape[1]}×{shape[2]} images; {name} has "
                              f"{info.image_size}×{info.image_size}")
    labels, _ = _read_idx(label_path, 2049, 1)
    if len(labels) != len(images):
        raise ApprenticeError(f"IDX file {label_path} has {len(labels)} labels but {image_path} "
                              f"has {len(images)} images")
    _check_labels(labels, info.num_classes, label_path)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ApprenticeError(f"{path} has label values {int(labels.min())}..{int(labels.max())}; "
                              f"allowed 0..{num_classes - 1}")


# ---------------------------------------------------------------- CIFAR (python pickle batches)

try:
    from numpy._core import multiarray as _multiarray  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# Everything a CIFAR batch may reference. `_codecs.encode` is how protocol-2 pickles written by
# Python 3 spell bytes; it only converts text and cannot run code. Nothing else is importable.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch without importing anything but numpy array rebuilding (the files are
    pickles, and plain pickle.load runs whatever code a tampered file names)."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # Python-2 pickles: keys come back as bytes
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ApprenticeError(f"refusing to load {module}.{name} from {self.path}: "
                                  "not a plain CIFAR batch") from None


def _read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, path).load()
    except ApprenticeError:
        raise
    except Exception as e:  # noqa: BLE001 -- a corrupt pickle can raise almost anything
        raise ApprenticeError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ApprenticeError(f"CIFAR batch {path} is not a dict with b'data' and {label_key!r}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ApprenticeError(f"CIFAR batch {path}: b'data' must be uint8 N×3072, got "
                              f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ApprenticeError(f"CIFAR batch {path}: {label_key!r} must be {len(data)} integers, "
                              f"got shape {labels.shape}")
    _check_labels(labels, num_classes, path)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(name: str, info: DatasetInfo, split: str, data_dir: str | None,
                download: bool) -> tuple[Tensor, Tensor]:
    if info.num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = b"labels"
    else:
        files, key = [split], b"fine_labels"
    paths = _find(name, info, files, data_dir, download)
    parts = [_read_cifar_batch(p, key, info.num_classes) for p in paths]
    return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])))
