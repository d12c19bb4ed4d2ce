"""The data sets apprentice knows: one `DatasetInfo` row each in the `DATASETS` table.

A row holds the facts the rest of the data package needs: class and channel counts, image size,
normalisation (per channel, on the [0, 1] scale), the training augmentation, where the files come
from (name, md5, mirrors, the folder a Debian package installs them to), and how to get them when
they are missing.

Two rows are formats rather than data sets: ``folder`` (your own images, ``train/<class>/*``,
``val/<class>/*``, optional ``test/``) and ``npz`` (your own arrays). Their facts are zero/empty
here and come from the files and the ``data.*`` settings (`apprentice.data.spec.resolve_spec`);
``imagenet`` is the folder format with ImageNet's facts filled in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "FOLDER_SPLITS", "SPLITS", "TENSOR_SPLITS", "DatasetInfo"]

#: Every split of a data set, as ``apprentice eval --split`` offers them: the test images (an image
#: folder's ``test/``, else its ``val/``), the validation images (``val/``, ``val.npz``), the
#: training images set aside (``data.holdout``) and the training images.
SPLITS = ("test", "val", "holdout", "train")
#: The splits of a data set held in IDX or CIFAR files (or generated): no ``val``.
TENSOR_SPLITS = ("train", "test", "holdout")
#: The sub-folders of an image folder (``test/`` optional).
FOLDER_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one data set. ``augmentation`` names its training augmentation (a key of
    `apprentice.data.augment.AUGMENTATIONS`), ``pad``/``flip`` its settings (pad-crop-flip: random
    crop after zero-padding by ``pad`` pixels; flip: random horizontal mirroring). ``files`` are
    (name, md5) pairs fetched from ``mirrors``; mean/std are per channel on the [0, 1] scale;
    ``classes`` the class names in label order (empty: numbered). Zero or empty values (the
    ``folder`` and ``npz`` formats) are read from the files or computed from the training images."""

    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool
    kind: str  # how its files are read: "idx" | "cifar" | "folder" | "npz" | "synthetic" (no files)
    sizes: tuple[int, int]  # (train, test) images
    files: tuple[tuple[str, str], ...] = ()
    mirrors: tuple[str, ...] = ()
    subdir: str = ""  # folder the archive unpacks to (CIFAR)
    system_dir: str | None = None  # where a distribution package installs the files
    hint: str = ""  # how to get the data, for the not-found message
    augmentation: str = "pad-crop-flip"
    classes: tuple[str, ...] = ()

    @property
    def is_folder(self) -> bool:
        """Image files in class folders (``folder``, ``imagenet``): scanned, then decoded or streamed;
        ``val/`` is their validation split and ``data.dir`` must name them."""
        return self.kind == "folder"

    @property
    def is_npz(self) -> bool:
        """Your own ``.npz`` arrays (``train.npz``, ``test.npz``/``val.npz``) in ``data.dir``."""
        return self.kind == "npz"

    @property
    def from_files(self) -> bool:
        """Read as a format (image folders, ImageNet too, and npz arrays): image size, channels and
        classes may be set in ``data.*`` or come from the files, and there is a ``val`` split."""
        return self.is_folder or self.is_npz


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
_FOLDER_HINT = ("arrange it as <dir>/train/<class>/<image>, <dir>/val/<class>/<image> (optional <dir>/test/) "
                "and set data.dir")


# Augmentation choices: MNIST digits are not mirror-symmetric (no flip); clothes are, so Fashion-
# MNIST flips (method.md section 5); a mirrored synthetic pattern is not its class pattern: no flip.
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        10, 1, 28, (0.2860,), (0.3530,), pad=2, flip=True, kind="idx", sizes=(60000, 10000), classes=_FASHION_CLASSES,
        files=tuple(zip((f + ".gz" for f in _IDX_FILES), ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
              "25c81989df183df01b3e8a0aad5dffbe", "bef4ecab320f06d8554ea6380940ec79",
              "bb300cfdad3c16e7a12a480ee83cd310"))),
        mirrors=(_FASHION_URL,), system_dir="/usr/share/datasets/fashion-mnist",
        hint=f"install it with `apt-get install dataset-fashion-mnist`, or download=True "
             f"(fetches {_FASHION_URL}{_IDX_FILES[0]}.gz and the other three files)"),
    "mnist": DatasetInfo(
        10, 1, 28, (0.1307,), (0.3081,), pad=2, flip=False, kind="idx", sizes=(60000, 10000),
        files=tuple(zip((f + ".gz" for f in _IDX_FILES), ("f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "d53e105ee54ea40749a09fcbcd1e9432", "9fb629c4189551a2d022fa330f9573f3",
              "ec29112dd5afa0611ce80d1b7f02629c"))),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        system_dir="/usr/share/datasets/mnist",
        hint="use download=True (fetches https://ossci-datasets.s3.amazonaws.com/mnist/"
             "train-images-idx3-ubyte.gz and the other three files)"),
    "cifar10": DatasetInfo(
        10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), pad=4, flip=True,
        kind="cifar", sizes=(50000, 10000), classes=("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                     "frog", "horse", "ship", "truck"),
        files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        mirrors=("https://www.cs.toronto.edu/~kriz/",), subdir="cifar-10-batches-py",
        hint="use download=True (fetches https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)"),
    "cifar100": DatasetInfo(
        100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), pad=4, flip=True,
        kind="cifar", sizes=(50000, 10000),
        files=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        mirrors=("https://www.cs.toronto.edu/~kriz/",), subdir="cifar-100-python",
        hint="use download=True (fetches https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)"),
    "imagenet": DatasetInfo(
        1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), pad=0, flip=True,
        kind="folder", sizes=(1281167, 50000), augmentation="random-resized-crop",
        hint="arrange it as <root>/train/<class>/*.JPEG and <root>/val/<class>/* and set data.dir"),
    "folder": DatasetInfo(0, 0, 0, (), (), pad=0, flip=True, kind="folder", sizes=(0, 0), hint=_FOLDER_HINT),
    "npz": DatasetInfo(
        0, 0, 0, (), (), pad=0, flip=True, kind="npz", sizes=(0, 0),
        hint="put train.npz and test.npz (arrays 'images' uint8 N×H×W or N×C×H×W, 'labels', optional "
             "'classes') in one folder and set data.dir"),
    "synthetic": DatasetInfo(
        10, 1, 16, (0.5,), (0.25,), pad=2, flip=False, kind="synthetic", sizes=(2048, 512)),
}
