"""Data: the data-set table, file formats, tensor batches with on-device augmentation, image folders.

- `apprentice.data.catalog`: `DATASETS`, one `DatasetInfo` row per data set; the split names (`SPLITS`).
- `apprentice.data.files`: finding, downloading and reading IDX and CIFAR files (validated, never
  unpickling code).
- `apprentice.data.tensors`: small sets as uint8 tensors, `normalize`, `TensorLoader`.
- `apprentice.data.images`: one image file to one uint8 tensor (Pillow; channels, resize, centre crop).
- `apprentice.data.augment`: `AUGMENTATIONS` by name (none, pad-crop-flip, random-resized-crop).
- `apprentice.data.normalise`: per-channel mean and std computed from training images.
- `apprentice.data.folders`: image folders (your own, ImageNet) decoded by DataLoader workers;
  `apprentice.data.folder_cache`: a small folder decoded once into a tensor file;
  `apprentice.data.arrays`: ``.npz`` arrays.
- `apprentice.data.preprocess`: `Preprocess`, how an image file becomes a model's input (channels,
  size, resize and crop, normalisation) and what its outputs are called.
- `apprentice.data.spec`: `DataSpec`, every fact of a data set resolved from settings, table and
  files (`resolve_spec`), and `load_split` for every data set held as tensors.
- `apprentice.data.batches`: `train_batches`/`eval_batches`, the one interface training uses (its
  batches are `TrainBatches`, whichever loader gives them);
  `cache_teacher` builds a teacher cache for a data set's training split.
- `apprentice.data.teacher_cache`: teacher logits for every view of every training image (exact
  mode, tensor data sets), checked against teacher and data when opened; `apprentice.data.crop_cache`:
  K stored random-resized crops an image with top-k logits (image folders);
  `apprentice.data.cache_build`: the chunked, resumable build both share (progress, ETA, logit checks);
  `apprentice.data.cache_file`: the resumable, memory-mapped safetensors file behind both.
"""

from apprentice.data.arrays import load_npz
from apprentice.data.augment import AUGMENTATIONS, Augmentation, eval_resize
from apprentice.data.batches import (
    HOLDOUT_SEED,
    FolderBatches,
    TrainBatches,
    TrainSet,
    cache_teacher,
    eval_batches,
    train_batches,
)
from apprentice.data.catalog import DATASETS, SPLITS, DatasetInfo
from apprentice.data.crop_cache import (
    CropCache,
    build_crop_cache,
    dense_logits,
    open_crop_cache,
)
from apprentice.data.folder_cache import folder_tensors
from apprentice.data.folders import ImageFolder, folder_loader, imagenet_loader
from apprentice.data.images import natural_key, read_image
from apprentice.data.normalise import channel_stats
from apprentice.data.preprocess import Preprocess
from apprentice.data.spec import DataSpec, load_split, resolve_spec
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
    "AUGMENTATIONS", "CACHE_DTYPES", "DATASETS", "HOLDOUT_SEED", "SPLITS", "Augmentation", "Batch", "CacheSource",
    "CachedBatches", "CropCache", "DataSpec", "DatasetInfo", "FolderBatches", "ImageFolder", "Preprocess", "TeacherCache",
    "TensorData", "TensorLoader", "TrainBatches", "TrainSet", "apply_views", "augment_batch", "build_crop_cache",
    "build_teacher_cache", "cache_teacher", "channel_stats", "dense_logits", "eval_batches", "eval_resize",
    "folder_loader", "folder_tensors", "imagenet_loader", "load_npz", "load_split", "load_tensors",
    "natural_key", "normalize", "open_crop_cache", "open_teacher_cache", "read_image", "resolve_spec",
    "synthetic", "teacher_hash", "tensor_source", "train_batches", "view_count", "view_ids", "view_params",
]
