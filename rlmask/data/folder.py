"""Image folders in the RadImageNet layout: ``root/{train,val[,test]}/<class...>/*.png``.

A class is the relative path of a folder that holds images (``CT/liver``). The folder tree is walked
once with ``os.scandir`` (no per-file stat) and the index is cached as JSON in the cache folder,
valid while no indexed directory's mtime has changed (adding or removing a file changes its folder's).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rlmask.data.source import RawSplit, Source
from rlmask.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_INDEX_VERSION = 1


def open_folder(root: Path, spec: str, cache_dir: Path | None) -> Source:
    """Index (or reuse the cached index of) an image folder and return its :class:`Source`."""
    root = Path(root).resolve()
    split_names = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    for required in ("train", "val"):
        if required not in split_names:
            raise UserError(f"--data {spec}: image folder {root} has no {required}/ folder "
                            "(expected train/, val/ and optionally test/ with one folder per class)")
    index = _cached_index(root, split_names, cache_dir)
    if index is None:
        index = _walk(root, split_names)
        _save_index(root, index, cache_dir)
    for split, folders in index["splits"].items():
        for folder, files in folders.items():
            if not files:
                raise UserError(f"--data {spec}: class folder {root / split / folder} has no images")
    classes = sorted({c for folders in index["splits"].values() for c in folders})
    lookup = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, folders in index["splits"].items():
        # String joins, not Path objects: a folder of a million files would spend seconds in pathlib.
        prefixes = {c: os.path.join(str(root), split, *c.split("/"), "") for c in folders}
        files = [prefixes[c] + f for c in sorted(folders) for f in folders[c]]
        labels = [lookup[c] for c in sorted(folders) for _ in folders[c]]
        splits[split] = RawSplit(labels=torch.tensor(labels, dtype=torch.int64), files=files)
    if not splits["train"].files:
        raise UserError(f"--data {spec}: {root / 'train'} has no class folders with images")
    # The folder's native shape and colour are taken from its first training image (header only).
    first = splits["train"].files[0]
    try:
        with Image.open(first) as im:
            w, h = im.size
            c = 3 if im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV") else 1
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"--data {spec}: cannot decode image {first} ({e})") from None
    return Source(name=root.name, spec=spec, classes=classes, native_shape=(h, w, c), splits=splits)


def decode_image(path: str, channels: int, size: int, spec: str) -> torch.Tensor:
    """Read one image file as uint8 (channels, size, size).

    Modes: L/RGB as they are; RGBA/LA/PA composited on black; P/CMYK/... via RGB; 16/32-bit
    integer and float images scaled by their own min-max (medical 12/16-bit images rarely use the full
    range). RGB -> grey by luminance, grey -> RGB by repetition; bilinear resize to size x size.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I") or im.mode == "F":  # I, I;16, I;16B, ... and float
                a = np.asarray(im, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
                im = Image.fromarray(a.round().astype(np.uint8))
            elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, (0, 0, 0))
                im.paste(rgba, mask=rgba.getchannel("A"))
            im = im.convert("L" if channels == 1 else "RGB")  # also 1, P, CMYK, YCbCr, ...
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.array(im, dtype=np.uint8)  # (S, S) or (S, S, 3), a writable copy
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"--data {spec}: cannot decode image {path} ({e})") from None
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # (C, S, S)


def _walk(root: Path, split_names: list[str]) -> dict:
    """One scandir walk: {"splits": {split: {class: [file names]}}, "dirs": {relative dir: mtime_ns}}."""
    splits: dict[str, dict[str, list[str]]] = {}
    dirs: dict[str, int] = {".": os.stat(root).st_mtime_ns}
    for split in split_names:
        folders: dict[str, list[str]] = {}
        stack = [""]
        while stack:
            rel = stack.pop()
            full = root / split / rel
            dirs[os.path.join(split, rel)] = os.stat(full).st_mtime_ns
            files, subdirs = [], []
            with os.scandir(full) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        subdirs.append(entry.name)
                    elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                        files.append(entry.name)
            if rel and (files or not subdirs):
                folders[rel.replace(os.sep, "/")] = sorted(files)  # a leaf without images is reported later
            stack.extend(os.path.join(rel, d) for d in subdirs)
        splits[split] = folders
    return {"version": _INDEX_VERSION, "root": str(root), "splits": splits, "dirs": dirs}


def _index_path(root: Path, cache_dir: Path | None) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return Path(cache_dir) / "folder-index" / f"{root.name}-{key}.json"


def _cached_index(root: Path, split_names: list[str], cache_dir: Path | None) -> dict | None:
    """The cached index when every indexed directory still has its recorded mtime, else None."""
    path = _index_path(root, cache_dir)
    if path is None:
        return None
    try:
        index = json.loads(path.read_text())
        if index.get("version") != _INDEX_VERSION or index.get("root") != str(root) \
                or sorted(index["splits"]) != sorted(split_names):
            return None
        for rel, mtime in index["dirs"].items():
            if os.stat(root / rel).st_mtime_ns != mtime:
                return None
        return index
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no cache, unreadable cache or a vanished directory: walk again


def _save_index(root: Path, index: dict, cache_dir: Path | None) -> None:
    path = _index_path(root, cache_dir)
    if path is None:
        return
    try:  # the cache only saves time; a read-only cache folder must not stop a run
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, path)
    except OSError:
        pass
