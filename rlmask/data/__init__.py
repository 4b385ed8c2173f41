"""Data: sources (npz, MedMNIST downloads, image folders, CSV/TSV manifests, DICOM, packs, synthetic), seeded
splits, the pool, device batches, augmentation.

Data flows one way: ``build_pool(--data specs, options=DataOptions(...))`` -> ``pool.splits[...]`` ->
``BatchLoader`` (uint8 batches on the device) -> ``Augment`` (normalised float batches).
"""

from rlmask.data.augment import DEFAULT_MEAN, DEFAULT_STD, Augment
from rlmask.data.loader import BatchLoader
from rlmask.data.medmnist import register_medmnist_file
from rlmask.data.options import DataOptions
from rlmask.data.pool import Pool, Split, build_pool

__all__ = [
    "build_pool",
    "DataOptions",
    "Pool",
    "Split",
    "BatchLoader",
    "Augment",
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "register_medmnist_file",
]
