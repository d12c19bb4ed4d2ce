"""Data: the data-set table, file formats, tensor batches with on-device augmentation, image folders.

- `apprentice.data.catalog`: `DATASETS`, one `DatasetInfo` row per data set.
- `apprentice.data.files`: finding, downloading and reading IDX and CIFAR files (validated, never
  unpickling code).
- `apprentice.data.tensors`: small sets as uint8 tensors, `normalize`, `TensorLoader`.
- `apprentice.data.folders`: ImageNet-style image folders decoded by DataLoader workers.
- `apprentice.data.batches`: `train_batches`/`eval_batches`, the one interface training uses;
  `cache_teacher` builds a teacher cache for a data set's training split.
- `apprentice.data.teacher_cache`: teacher logits for every view of every training image (exact
  mode, tensor data sets), checked against teacher and data when opened; `apprentice.data.crop_cache`:
  K stored random-resized crops an image with top-k logits (image folders);
  `apprentice.data.cache_file`: the resumable, memory-mapped safetensors file behind both.
"""

from apprentice.data.batches import (
    HOLDOUT_SEED,
    FolderBatches,
    TrainSet,
    cache_teacher,
    eval_batches,
    train_batches,
)
from apprentice.data.catalog import DATASETS, DatasetInfo
from apprentice.data.crop_cache import (
    CropCache,
    build_crop_cache,
    dense_logits,
    open_crop_cache,
)
from apprentice.data.folders import ImageFolder, imagenet_loader
from apprentice.data.teacher_cache import (
    CACHE_DTYPES,
    CachedBatches,
    CacheSource,
    TeacherCache,
    build_teacher_cache,
    open_teacher_cache,
    teacher_hash,
    tensor_source,
)
from apprentice.data.tensors import (
    Batch,
    TensorData,
    TensorLoader,
    apply_views,
    augment_batch,
    load_tensors,
    normalize,
    synthetic,
    view_count,
    view_ids,
    view_params,
)

__all__ = [
    "CACHE_DTYPES", "DATASETS", "HOLDOUT_SEED", "Batch", "CacheSource", "CachedBatches", "CropCache", "DatasetInfo",
    "FolderBatches", "ImageFolder", "TeacherCache", "TensorData", "TensorLoader", "TrainSet", "apply_views",
    "augment_batch", "build_crop_cache", "build_teacher_cache", "cache_teacher", "dense_logits", "eval_batches",
    "imagenet_loader", "load_tensors", "normalize", "open_crop_cache", "open_teacher_cache", "synthetic",
    "teacher_hash", "tensor_source", "train_batches", "view_count", "view_ids", "view_params",
]
