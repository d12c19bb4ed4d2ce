"""Data: the data-set table, file formats, tensor batches with on-device augmentation, image folders.

- `apprentice.data.catalog`: `DATASETS`, one `DatasetInfo` row per data set.
- `apprentice.data.files`: finding, downloading and reading IDX and CIFAR files (validated, never
  unpickling code).
- `apprentice.data.tensors`: small sets as uint8 tensors, `normalize`, `TensorLoader`.
- `apprentice.data.folders`: ImageNet-style image folders decoded by DataLoader workers.
- `apprentice.data.batches`: `train_batches`/`eval_batches`, the one interface training uses.
"""

from apprentice.data.batches import (
    HOLDOUT_SEED,
    FolderBatches,
    TrainSet,
    eval_batches,
    train_batches,
)
from apprentice.data.catalog import DATASETS, DatasetInfo
from apprentice.data.folders import ImageFolder, imagenet_loader
from apprentice.data.tensors import (
    TensorData,
    TensorLoader,
    augment_batch,
    load_tensors,
    normalize,
    synthetic,
)

__all__ = [
    "DATASETS", "HOLDOUT_SEED", "DatasetInfo", "FolderBatches", "ImageFolder", "TensorData", "TensorLoader",
    "TrainSet", "augment_batch", "eval_batches", "imagenet_loader", "load_tensors", "normalize", "synthetic",
    "train_batches",
]
