"""The pool: several ``--data`` sources as one labelled set with train/val[/test] splits.

Classes are namespaced ``source/class`` in ``--data`` order; every image comes out at one size and one
channel count. In-memory sources (npz, medmnist, synthetic) are resized once when the pool is built;
folder-backed sources (image folders, CSV/TSV manifests) decode with PIL (DICOM with pydicom) when a batch
is loaded; packed folders stay memory-mapped and a batch reads only its rows. How folders and manifests
are read (seeded splits, exclusions, DICOM windows) is set by :class:`~rlmask.data.options.DataOptions`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from rlmask.data.folder import colour_counts, decode_image, open_folder
from rlmask.data.manifest import is_manifest_spec, open_manifest
from rlmask.data.medmnist import cache_root, open_medmnist
from rlmask.data.npz import open_npz
from rlmask.data.options import DataOptions
from rlmask.data.packed import PackedPart, is_packed, open_packed
from rlmask.data.source import Source, resize_images
from rlmask.data.synthetic import open_synthetic
from rlmask.errors import UserError

SPLIT_NAMES = ("train", "val", "test")


class _MemoryPart:
    """Images of one source split held as one uint8 tensor (n, c, S, S), c = 1 or the pool's channels."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: torch.Tensor, channels: int) -> torch.Tensor:
        x = self.images[index]  # (B, c, S, S)
        return x.expand(-1, channels, -1, -1) if x.shape[1] != channels else x


class _FolderPart:
    """Image files of one source split, decoded and resized when loaded."""

    def __init__(self, files: list[str], spec: str, size: int, window: tuple[float, float] | None = None):
        self.files, self.spec, self.size, self.window = files, spec, size, window

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: torch.Tensor, channels: int) -> torch.Tensor:
        imgs = [decode_image(self.files[i], channels, self.size, self.spec, self.window) for i in index.tolist()]
        return torch.stack(imgs) if imgs else torch.empty((0, channels, self.size, self.size), dtype=torch.uint8)


class Split:
    """One split of the pool: labels (N,) int64 into ``pool.classes`` and ``load(index)`` of images."""

    def __init__(self, parts: list, labels: torch.Tensor, channels: int, image_size: int):
        self._parts = parts
        self.labels = labels  # (N,) int64
        self.channels, self.image_size = channels, image_size
        self._offsets = torch.tensor([0] + [len(p) for p in parts]).cumsum(0)  # (P+1,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def paths(self) -> list[str | None] | None:
        """File path per sample when any source is folder-backed (None for in-memory samples), else None."""
        if not self.has_files:
            return None
        return [f for p in self._parts for f in (p.files if isinstance(p, _FolderPart) else [None] * len(p))]

    @property
    def has_files(self) -> bool:
        """True when some samples are decoded from files when loaded (worth parallel workers)."""
        return any(isinstance(p, _FolderPart) for p in self._parts)

    def load(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, S, S) of the samples ``index`` (B,) int64, already at the pool's size."""
        index = torch.as_tensor(index, dtype=torch.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)})")
        if len(self._parts) == 1:
            return self._parts[0].load(index, self.channels).contiguous()
        out = torch.empty((len(index), self.channels, self.image_size, self.image_size), dtype=torch.uint8)
        part = torch.searchsorted(self._offsets, index, right=True) - 1  # (B,) part of each sample
        for p in part.unique().tolist():
            sel = (part == p).nonzero()[:, 0]
            out[sel] = self._parts[p].load(index[sel] - self._offsets[p], self.channels)
        return out

    def subset(self, index: torch.Tensor) -> Split:
        """A new split holding the samples ``index`` (M,) int64, kept in natural (sorted) order."""
        index = torch.as_tensor(index, dtype=torch.int64).sort().values
        part = torch.searchsorted(self._offsets, index, right=True) - 1  # (M,) part of each sample
        parts = []
        for p in part.unique().tolist():
            local = index[part == p] - self._offsets[p]
            old = self._parts[p]
            if isinstance(old, PackedPart):
                parts.append(old.subset(local))
                continue
            parts.append(
                _MemoryPart(old.images[local])
                if isinstance(old, _MemoryPart)
                else _FolderPart([old.files[i] for i in local.tolist()], old.spec, old.size, old.window)
            )
        return Split(parts, self.labels[index], self.channels, self.image_size)


def class_balanced_subset(labels: torch.Tensor, per_class: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices (M,) of ``per_class`` random samples of each class in ``labels`` (N,) int64.

    A class with fewer samples gives all it has; ``per_class`` None keeps every sample. The draw
    depends on the labels and the generator only, never on images or models.
    """
    if per_class is None:
        return torch.arange(len(labels))
    perm = torch.randperm(len(labels), generator=generator)  # (N,)
    order = perm[torch.argsort(labels[perm], stable=True)]  # random within each class, classes grouped
    counts = torch.bincount(labels)
    rank = torch.arange(len(order)) - (counts.cumsum(0) - counts)[labels[order]]  # position within class
    return order[rank < per_class].sort().values


class Pool:
    """Union of the sources given with ``--data``: classes, channels, image size and splits."""

    def __init__(
        self,
        sources: list[Source],
        names: list[str],
        classes: list[str],
        channels: int,
        image_size: int,
        splits: dict[str, Split],
    ):
        self._sources = sources
        self.sources = names
        self.classes = classes
        self.channels = channels
        self.image_size = image_size
        self.splits = splits

    def subsample(self, split: str, per_class: int, seed: int) -> Pool:
        """A pool whose ``split`` keeps at most ``per_class`` samples per class, drawn with ``seed``.

        The kept samples stay in their natural order; other splits are shared, not copied.
        """
        if per_class < 1:
            raise ValueError(f"per_class must be positive, got {per_class}")
        index = class_balanced_subset(self.splits[split].labels, per_class, torch.Generator().manual_seed(seed))
        splits = dict(self.splits) | {split: self.splits[split].subset(index)}
        return Pool(self._sources, self.sources, self.classes, self.channels, self.image_size, splits)

    def info(self, colours: bool = False, progress: bool = False) -> dict:
        """Plain-data summary: classes, channels, image size, sources (with how each was read) and
        per-split class counts. ``colours``: also count grey and RGB files of file-backed sources (reads
        every file's header)."""
        sources = []
        for n, s in zip(self.sources, self._sources):
            entry = {
                "name": n,
                "spec": s.spec,
                "num_classes": len(s.classes),
                "native_shape": list(s.native_shape),
                **s.details,
            }
            files = [f for raw in s.splits.values() if raw.files is not None for f in raw.files]
            if colours and files:
                entry["colours"] = colour_counts(files, s.spec, progress)
            sources.append(entry)
        return {
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "channels": self.channels,
            "image_size": self.image_size,
            "sources": sources,
            "splits": {
                name: {
                    "count": len(split),
                    "per_class": dict(
                        zip(self.classes, torch.bincount(split.labels, minlength=len(self.classes)).tolist())
                    ),
                }
                for name, split in self.splits.items()
            },
        }


def open_source(
    spec: str,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    options: DataOptions | None = None,
    seed: int = 0,
) -> Source:
    """The :class:`Source` named by one ``--data`` spec (validated, images not read yet).

    ``options`` and ``seed`` matter to image folders and manifests only (see :func:`build_pool`).
    """
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return open_synthetic(spec)
    if spec.startswith("medmnist:"):
        return open_medmnist(spec, cache_dir, progress)
    if is_manifest_spec(spec):
        return open_manifest(spec, options, seed)
    path = Path(spec).expanduser()
    if spec.lower().endswith(".npz"):
        return open_npz(path, spec)
    if is_packed(path):
        return open_packed(path, spec)
    if path.is_dir():
        return open_folder(path, spec, cache_root(cache_dir), options, seed)
    if path.exists():
        raise UserError(f"--data {spec}: not a .npz file or an image folder (nor a .csv/.tsv manifest)")
    raise UserError(
        f"--data {spec}: not found (expected a .npz file, an image folder, a .csv/.tsv manifest, "
        "'synthetic[:key=value,...]' or 'medmnist:NAME[@SIZE]')"
    )


def build_pool(
    specs: list[str],
    image_size: int | None = None,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    options: DataOptions | None = None,
    seed: int = 0,
    warn: bool = True,
) -> Pool:
    """Open every ``--data`` spec and build the pool.

    image_size None -> the largest native side among the sources; channels None -> 3 if any source is
    colour, else 1. In-memory images are resized here, once; raises UserError for bad input.
    ``options`` says how image folders and manifests are read; ``seed`` (the run's) seeds the split of
    those without val/test splits unless ``options.split_seed`` is set. ``warn``: print each source's
    warnings (masks left out, rows skipped, patterns that matched nothing) to stderr, once per job.
    """
    options = options or DataOptions()
    options.validate()
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise UserError("--data: give at least one data source")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"--image-size {image_size}: must be a positive integer")
    if channels not in (None, 1, 3):
        raise UserError(f"--channels {channels}: must be 1 or 3")
    window = options.window_values()
    sources = [open_source(s, cache_dir, progress, options, seed) for s in specs]
    if warn and int(os.environ.get("RANK", "0")) == 0:
        for s in sources:
            for line in s.details.get("warnings", []):
                print(f"warning: --data {s.spec}: {line}", file=sys.stderr)
    size = image_size or max(max(s.native_shape[:2]) for s in sources)
    channels = channels or (3 if any(s.native_shape[2] == 3 for s in sources) else 1)

    names, classes, offsets = [], [], []
    for s in sources:
        name, k = s.name, 2
        while name in names:  # duplicate source names get a suffix: name, name-2, name-3, ...
            name, k = f"{s.name}-{k}", k + 1
        names.append(name)
        offsets.append(len(classes))
        classes += [f"{name}/{c}" for c in s.classes]

    splits = {}
    bar = tqdm(total=sum(len(s.splits) for s in sources), desc="data", unit="split", disable=not progress)
    for split in SPLIT_NAMES:
        parts, labels = [], []
        for s, off in zip(sources, offsets):
            raw = s.splits.get(split)
            if raw is None:
                continue
            if raw.files is not None:
                parts.append(_FolderPart(raw.files, s.spec, size, window))
            elif raw.shards is not None:  # memory-mapped: nothing read until a batch is loaded
                parts.append(PackedPart(raw.shards, size))
            else:
                parts.append(_MemoryPart(resize_images(raw.read(), channels, size)))
            labels.append(raw.labels + off)
            bar.update(1)
        if parts:
            splits[split] = Split(parts, torch.cat(labels), channels, size)
    bar.close()
    return Pool(sources, names, classes, channels, size, splits)
