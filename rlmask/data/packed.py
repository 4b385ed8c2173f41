"""Packed image folders: every image decoded and resized once into sharded, memory-mappable ``.npy`` files.

Training from a folder of a million small files costs one open, decode and resize per sample and epoch.
``pack_folder`` pays that once and writes, per split, uint8 shards ``{split}-{k:05d}.npy`` of shape
(n, C, S, S) and ``{split}-labels.npy`` (int64), described by ``meta.json``. A packed folder is a ``--data``
spec of its own: the shards are memory-mapped, so building the pool reads only headers and labels, and a
batch reads only its own rows.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rlmask.data.folder import decode_image, open_folder
from rlmask.data.manifest import is_manifest_spec, open_manifest
from rlmask.data.options import DataOptions
from rlmask.data.source import RawSplit, Source, resize_images
from rlmask.errors import UserError

FORMAT, VERSION, META = "rlmask-packed", 1, "meta.json"
_CHUNK = 256  # images per decoding task: large enough to amortise inter-process traffic


def is_packed(path: Path) -> bool:
    """True for a directory that looks like a pack: train labels, or a meta.json and no sub-folders.

    A dataset of class folders may ship a meta.json of its own; a pack never has sub-folders.
    """
    path = Path(path)
    if not path.is_dir() or (path / "train").is_dir():
        return False
    if (path / "train-labels.npy").is_file():
        return True
    return (path / META).is_file() and not any(p.is_dir() for p in path.iterdir())


def pack_folder(
    src: str,
    out: Path,
    image_size: int,
    channels: int | None = None,
    shard_size: int = 50_000,
    num_workers: int = 0,
    progress: bool = False,
    options: DataOptions | None = None,
    seed: int = 0,
) -> dict:
    """Decode and resize every image of the image folder or manifest ``src`` once and write the pack ``out``.

    channels None -> the channels of the first training image. ``options`` and ``seed`` read ``src`` as
    :func:`rlmask.data.build_pool` does; a split made by them is frozen into the pack (and its meta.json). The pack is written to a
    temporary folder beside ``out`` and renamed at the end, so a failure leaves no half-written pack.
    Decoding runs in ``num_workers`` processes when positive. Returns the pack's ``meta.json`` content;
    raises UserError for bad input (an existing ``out`` included: packs are never overwritten).
    """
    out = Path(out).expanduser()
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"--image-size {image_size}: must be a positive integer")
    if channels not in (None, 1, 3):
        raise UserError(f"--channels {channels}: must be 1 or 3")
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size}: must be a positive integer")
    if out.exists() or out.is_symlink():
        what = "already holds a pack" if (out / META).is_file() else "already exists"
        raise UserError(f"--out {out}: {what}; packs are never overwritten, remove it or choose another folder")
    options = options or DataOptions()
    options.validate()
    window = options.window_values()
    root = Path(src).expanduser()
    if is_manifest_spec(src):
        source = open_manifest(src, options, seed)
    elif root.is_dir() and not is_packed(root):
        source = open_folder(root, src, cache_dir=None, options=options, seed=seed)  # walked once anyway
    else:
        raise UserError(
            f"{src}: not an image folder (class folders, optionally inside train/, val/, test/) or a .csv/.tsv manifest"
        )
    c = channels or source.native_shape[2]

    # The whole layout (and so meta.json) follows from the file lists; decoding only fills it in.
    splits, tasks = {}, []  # tasks: (shard, first row in the shard, files); never across a shard boundary
    for split, raw in source.splits.items():
        n = len(raw.files)
        starts = range(0, n, shard_size)
        shards = [{"file": f"{split}-{k:05d}.npy", "count": min(shard_size, n - s)} for k, s in enumerate(starts)]
        splits[split] = {"count": n, "shards": shards, "labels_file": f"{split}-labels.npy"}
        tasks += [
            (shard, i, raw.files[s + i : s + min(i + _CHUNK, shard["count"])])
            for shard, s in zip(shards, starts)
            for i in range(0, shard["count"], _CHUNK)
        ]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "name": source.name,
        "source": str(src),
        "classes": source.classes,
        "image_size": image_size,
        "channels": c,
        "native_shape": list(source.native_shape),
        "splits": splits,
        "read": source.details,
    }  # layout, split made, exclusions, warnings

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by killed packs whose process is gone
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        for split, raw in source.splits.items():
            np.save(tmp / splits[split]["labels_file"], raw.labels.numpy().astype(np.int64))
        jobs = ((files, c, image_size, src, window) for _, _, files in tasks)
        bar = tqdm(total=sum(s["count"] for s in splits.values()), desc="pack", unit="img", disable=not progress)
        with multiprocessing.Pool(num_workers) if num_workers > 0 else contextlib.nullcontext() as pool:
            chunks = pool.imap(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)  # in task order
            array, name = None, None
            for (shard, row, _), x in zip(tasks, chunks):  # x: (b, C, S, S) uint8
                if shard["file"] != name:
                    if array is not None:
                        array.flush()
                    name = shard["file"]
                    array = np.lib.format.open_memmap(
                        tmp / name, mode="w+", dtype=np.uint8, shape=(shard["count"], c, image_size, image_size)
                    )
                array[row : row + len(x)] = x
                bar.update(len(x))
            if array is not None:
                array.flush()
                del array  # unmapped before the rename
        bar.close()
        (tmp / META).write_text(json.dumps(meta, indent=1))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _decode_chunk(job: tuple[list[str], int, int, str, tuple[float, float] | None]) -> np.ndarray:
    """uint8 (b, C, S, S) of a list of image files (runs in a worker process when packing in parallel)."""
    files, channels, size, spec, window = job
    return np.stack([decode_image(f, channels, size, spec, window).numpy() for f in files])


def open_packed(root: Path, spec: str) -> Source:
    """Validate a pack (meta.json, shard headers, labels) and return its memory-mapped :class:`Source`.

    No pixels are read here. The source's native shape is the packed one (S, S, C), so a pool over
    packs alone defaults to the packed size; meta.json keeps the original folder's shape.
    """
    root = Path(root)
    meta_path = root / META

    def fail(what: str):
        raise UserError(f"--data {spec}: {what}")

    if not meta_path.is_file():
        fail(f"{meta_path} is missing (a packed folder is written by 'rlmask data pack')")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            fail(f"{meta_path} is not an {FORMAT} version {VERSION} description")
        classes, size, c = [str(k) for k in meta["classes"]], int(meta["image_size"]), int(meta["channels"])
        layout = {
            s: (int(v["count"]), [(str(sh["file"]), int(sh["count"])) for sh in v["shards"]], str(v["labels_file"]))
            for s, v in meta["splits"].items()
        }
        name = str(meta["name"])
        native = [int(v) for v in meta.get("native_shape", [size, size, c])]
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        fail(f"{meta_path} is corrupt ({type(e).__name__}: {e})")
    if not {"train", "val"} <= set(layout):
        fail(f"{meta_path} has no train and val splits")

    splits = {}
    for split, (count, shard_list, labels_file) in layout.items():
        shards = [_open_npy(root / f, (n, c, size, size), np.uint8, fail) for f, n in shard_list]
        labels = np.array(_open_npy(root / labels_file, (count,), np.int64, fail))  # small: read whole
        if sum(n for _, n in shard_list) != count:
            fail(f"{meta_path}: the {split} shards hold {sum(n for _, n in shard_list)} images, not {count}")
        if count and (labels.min() < 0 or labels.max() >= len(classes)):
            fail(f"{root / labels_file}: labels out of range for {len(classes)} classes")
        splits[split] = RawSplit(labels=torch.from_numpy(labels), shards=shards)
    details = {
        "layout": "pack",
        "packed_shape": [size, size, c],
        "packed_from_native_shape": native,
        "packed_from": str(meta.get("source", "")),
    }
    return Source(name=name, spec=spec, classes=classes, native_shape=(size, size, c), splits=splits, details=details)


def _open_npy(path: Path, shape: tuple[int, ...], dtype, fail) -> np.memmap:
    """``path`` memory-mapped read-only, checked against the shape and dtype that meta.json promises."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        fail(f"shard {path} is missing")
    except (OSError, ValueError, EOFError) as e:
        fail(f"shard {path} is corrupt ({e})")
    if a.shape != shape or a.dtype != dtype:
        fail(f"shard {path} has shape {a.shape} and dtype {a.dtype}, meta.json says {shape} {np.dtype(dtype)}")
    return a


class PackedPart:
    """One packed split in the pool: memory-mapped shards of which ``load`` reads only the requested rows.

    Images come out as stored when the pool's size matches the pack (grey stays one channel and is
    repeated, like in-memory sources); otherwise the batch is resized with :func:`resize_images`.
    """

    def __init__(self, shards: list[np.ndarray], size: int, rows: torch.Tensor | None = None):
        self.shards, self.size = shards, size  # shards: (n_k, c, s, s) uint8 memmaps
        self.rows = rows  # (M,) int64 rows of the packed split kept by ``subset``; None: all of them
        self._offsets = torch.tensor([0] + [len(s) for s in shards]).cumsum(0)  # (K+1,)

    def __len__(self) -> int:
        return int(self._offsets[-1]) if self.rows is None else len(self.rows)

    def subset(self, local: torch.Tensor) -> PackedPart:
        """The samples ``local`` (M,) int64 of this part, still memory-mapped."""
        return PackedPart(self.shards, self.size, local if self.rows is None else self.rows[local])

    def load(self, index: torch.Tensor, channels: int) -> torch.Tensor:
        """uint8 (B, channels, size, size) of the samples ``index`` (B,) int64."""
        rows = index if self.rows is None else self.rows[index]  # (B,)
        if len(rows) == 0:
            return torch.empty((0, channels, self.size, self.size), dtype=torch.uint8)
        x = np.empty((len(rows), *self.shards[0].shape[1:]), dtype=np.uint8)  # (B, c, s, s)
        shard = torch.searchsorted(self._offsets, rows, right=True) - 1  # (B,) shard of each sample
        for k in shard.unique().tolist():
            sel = (shard == k).nonzero()[:, 0]
            x[sel.numpy()] = self.shards[k][(rows[sel] - self._offsets[k]).numpy()]  # reads these rows only
        x = torch.from_numpy(x)
        if x.shape[-1] != self.size or x.shape[1] > channels:
            x = resize_images(x.permute(0, 2, 3, 1), channels, self.size)  # (B, c', size, size)
        return x.expand(-1, channels, -1, -1) if x.shape[1] != channels else x

    def __getstate__(self) -> dict:
        # A pickled memmap carries all its pixels: send the file names to worker processes instead.
        return {**self.__dict__, "shards": [s.filename for s in self.shards]}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, shards=[np.load(f, mmap_mode="r") for f in state["shards"]])


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a pack still being written by it must not be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
