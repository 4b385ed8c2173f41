"""Image folders as datasets ship them, with or without split folders.

Layouts, recognised from the folder's first level:

* split folders ``root/{train,val[,test]}/<class...>/*`` (RadImageNet), named case-insensitively
  ``train|training``, ``val|valid|validation``, ``test|testing``; train + test without val gets val
  split off train (``--val-fraction`` of each training class, seeded);
* class folders ``root/<class...>/*`` without split folders: a seeded, stratified split into
  train/val/test (``--val-fraction``, ``--test-fraction``), see :mod:`rlmask.data.split`.

A class is the relative path of a folder that holds images (``CT/liver``). The tree is walked once with
``os.scandir`` (no per-file stat) and the raw listing is cached as JSON in the cache folder, valid while
no indexed directory's mtime has changed (adding or removing a file changes its folder's). ``--exclude``
and mask detection (:mod:`rlmask.data.filters`) run on the listing, so they never invalidate the cache;
the split a run made is recorded in the index beside the listing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from rlmask.data.dicom import DICOM_EXTENSIONS, dicom_shape, is_dicom_path, read_dicom
from rlmask.data.filters import FileFilter
from rlmask.data.options import DataOptions
from rlmask.data.source import RawSplit, Source
from rlmask.data.split import complete_splits, split_name
from rlmask.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_EXTENSIONS)
SKIP_DIRS = ("__MACOSX",)  # resource forks left by macOS zip archives: never data
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_INDEX_VERSION = 2


def open_folder(
    root: Path, spec: str, cache_dir: Path | None, options: DataOptions | None = None, seed: int = 0
) -> Source:
    """Index (or reuse the cached index of) an image folder and return its :class:`Source`.

    ``seed`` (or ``options.split_seed``) seeds the split of folders without val (and test) folders.
    """
    options = options or DataOptions()
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"--data {spec}: not a folder")
    index = _cached_index(root, cache_dir)
    if index is None:
        index = _walk(root)
        _save_index(root, index, cache_dir)

    layout, groups = _layout(root, index, spec)  # {split or "": {class: relative folder}}
    filt = FileFilter(options.exclude, options.keep_masks)
    listed: dict[str, dict[str, list[str]]] = {}  # split -> class -> absolute file paths
    dropped: list[str] = []  # class folders whose every file was excluded
    for split, classes in groups.items():
        for cls, rel in classes.items():
            names = index["files"].get(rel, [])
            if not names:
                raise UserError(f"--data {spec}: class folder {root / rel} has no images")
            # String joins, not Path objects: a folder of a million files would spend seconds in pathlib.
            prefix = os.path.join(str(root), *rel.split("/"), "")
            kept = [prefix + f for f in names if filt.keep(f"{rel}/{f}")]
            if kept:  # a class whose every file was left out is dropped, not an error
                listed.setdefault(split, {})[cls] = kept
            else:
                dropped.append(f"{split}/{cls}" if split else cls)
    filt.check_not_empty(sum(len(f) for c in listed.values() for f in c.values()), spec)

    classes = sorted({c for by_class in listed.values() for c in by_class})
    lookup = {c: i for i, c in enumerate(classes)}
    given = {}
    for split, by_class in listed.items():
        files = [f for c in sorted(by_class) for f in by_class[c]]
        labels = np.array([lookup[c] for c in sorted(by_class) for _ in by_class[c]], dtype=np.int64)
        given[split or "train"] = (files, labels)  # class folders without splits: everything is "train" first
    if "train" not in given:
        raise UserError(f"--data {spec}: the training folder of {root} has no class folders with images")
    split_seed = options.split_seed if options.split_seed is not None else seed
    given, made = complete_splits(given, classes, options.val_fraction, options.test_fraction, split_seed, spec)
    if made is not None:
        _record_split(root, index, cache_dir, made, given)

    splits = {
        s: RawSplit(labels=torch.from_numpy(given[s][1]), files=given[s][0])
        for s in ("train", "val", "test")
        if s in given
    }
    details = {
        "layout": layout,
        "split": made,
        **filt.report(),
        "dropped_classes": dropped,
        "warnings": filt.warnings(),
    }
    return Source(
        name=root.name,
        spec=spec,
        classes=classes,
        native_shape=file_shape(splits["train"].files[0], spec),
        splits=splits,
        details=details,
    )


def _layout(root: Path, index: dict, spec: str) -> tuple[str, dict[str, dict[str, str]]]:
    """(description, {split: {class: folder relative to root}}); split "" when the folder has no split folders.

    A class folder is one that holds image files, or a leaf without any (reported as empty by the caller).
    """
    dirs = [d for d in index["dirs"] if d != "."]
    parents = {d.rsplit("/", 1)[0] if "/" in d else "." for d in dirs}
    top = sorted(d for d in dirs if "/" not in d)
    by_split: dict[str, list[str]] = {}
    for d in top:
        if split_name(d):
            by_split.setdefault(split_name(d), []).append(d)
    for split, names in by_split.items():
        if len(names) > 1:
            raise UserError(f"--data {spec}: {root} has several {split} folders ({', '.join(names)})")

    def classes_below(base: str) -> dict[str, str]:
        start = f"{base}/" if base else ""
        return {
            d[len(start) :]: d
            for d in sorted(dirs)
            if d.startswith(start) and d != base and (index["files"].get(d) or d not in parents)
        }

    if not by_split:
        if not top:
            raise UserError(
                f"--data {spec}: {root} has no class folders (expected <class>/ folders of images, "
                "optionally inside train/, val/ and test/ folders)"
            )
        return "class folders (seeded split)", {"": classes_below("")}
    others = [d for d in top if not split_name(d)]
    if others:
        raise UserError(
            f"--data {spec}: {root} mixes split folders ({', '.join(n for v in by_split.values() for n in v)}) "
            f"with other folders ({', '.join(others)}); move those out of it"
        )
    if "train" not in by_split:
        raise UserError(
            f"--data {spec}: {root} has {'/, '.join(n for v in by_split.values() for n in v)}/ but no "
            "train/ (or training/) folder"
        )
    names = {s: v[0] for s, v in by_split.items()}
    groups = {s: classes_below(names[s]) for s in ("train", "val", "test") if s in names}
    for s, classes in groups.items():
        if not classes:
            raise UserError(
                f"--data {spec}: {root / names[s]} has no class folders (expected "
                f"{names[s]}/<class>/ folders of images)"
            )
    layout = "split folders (" + ", ".join(f"{names[s]}/" for s in ("train", "val", "test") if s in names) + ")"
    return layout, groups


def file_shape(path: str, spec: str) -> tuple[int, int, int]:
    """(H, W, C) of an image file from its header (C = 3 for colour modes, else 1)."""
    if is_dicom_path(path):
        return dicom_shape(path, spec)
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w, 3 if im.mode in COLOUR_MODES else 1
    except Image.DecompressionBombError as e:
        raise UserError(f"{_where(spec)}image {path} refused: {_bomb(e)}") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"{_where(spec)}cannot decode image {path} ({e})") from None


def _where(spec: str | None) -> str:
    """The prefix of a decoding error: the --data spec the file came from (none for predict's files)."""
    return f"--data {spec}: " if spec else ""


def _bomb(err: Exception) -> str:
    return (
        f"more pixels than PIL's decompression-bomb guard allows ({str(err).split('could be')[0].strip()}); "
        "shrink the file, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
    )


def colour_counts(files: list[str], spec: str, progress: bool = False) -> dict[str, int]:
    """How many of ``files`` are grey and how many colour, from their headers (no pixels decoded)."""
    counts = {"grey": 0, "rgb": 0}
    for f in tqdm(files, desc="headers", unit="file", disable=not progress, leave=False):
        counts["rgb" if file_shape(f, spec)[2] == 3 else "grey"] += 1
    return counts


def decode_image(
    path: str, channels: int, size: int, spec: str, window: tuple[float, float] | None = None
) -> torch.Tensor:
    """Read one image file as uint8 (channels, size, size).

    Modes: L/RGB as they are; RGBA/LA/PA composited on black; P/CMYK/... via RGB; 16/32-bit
    integer and float images scaled by their own min-max (medical 12/16-bit images rarely use the full
    range); DICOM through :func:`rlmask.data.dicom.read_dicom` (``window``: CENTER, WIDTH). RGB -> grey by
    luminance, grey -> RGB by repetition; bilinear resize to size x size.
    """
    try:
        if is_dicom_path(path):
            im = Image.fromarray(read_dicom(path, spec, window))
        else:
            im = Image.open(path)
        with im:
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
    except Image.DecompressionBombError as e:
        raise UserError(f"{_where(spec)}image {path} refused: {_bomb(e)}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"{_where(spec)}cannot decode image {path} ({e})") from None
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # (C, S, S)


def _walk(root: Path) -> dict:
    """One scandir walk: {"files": {relative dir: [image file names]}, "dirs": {relative dir: mtime_ns}}.

    Relative dirs are ``/``-separated, the root is ``"."``; only dirs holding images appear in "files".
    """
    files_by_dir: dict[str, list[str]] = {}
    dirs: dict[str, int] = {}
    stack = [""]
    seen: set[tuple[int, int]] = set()  # (device, inode) of every folder walked: a symlink loop is walked once
    while stack:
        rel = stack.pop()
        full = os.path.join(str(root), rel) if rel else str(root)
        try:
            st = os.stat(full)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs[rel or "."] = st.st_mtime_ns
            files = []
            with os.scandir(full) as it:
                for entry in it:
                    if entry.name.startswith(".") or entry.name in SKIP_DIRS:
                        continue
                    if entry.is_dir():
                        stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                    elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                        files.append(entry.name)
        except OSError as err:  # unreadable folder, broken link, a loop the OS itself refuses
            raise UserError(f"--data {root}: cannot read folder {full} ({err.strerror or err})") from None
        if files:
            files_by_dir[rel or "."] = sorted(files)
    return {"version": _INDEX_VERSION, "root": str(root), "files": files_by_dir, "dirs": dirs}


def _index_path(root: Path, cache_dir: Path | None) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return Path(cache_dir) / "folder-index" / f"{root.name}-{key}.json"


def _cached_index(root: Path, cache_dir: Path | None) -> dict | None:
    """The cached index when every indexed directory still has its recorded mtime, else None."""
    path = _index_path(root, cache_dir)
    if path is None:
        return None
    try:
        index = json.loads(path.read_text())
        if index.get("version") != _INDEX_VERSION or index.get("root") != str(root):
            return None
        for rel, mtime in index["dirs"].items():
            if os.stat(root / rel).st_mtime_ns != mtime:
                return None
        if not isinstance(index["files"], dict):
            return None
        return index
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no cache, unreadable cache or a vanished directory: walk again


def _record_split(
    root: Path, index: dict, cache_dir: Path | None, made: dict, splits: dict[str, tuple[list[str], np.ndarray]]
) -> None:
    """Keep the split a run made in the cached index: its parameters and the held-out files.

    The split is recomputed (a pure function) on every run; the record is there to be read, and to
    show which files a seed held out.
    """
    prefix = os.path.join(str(root), "")
    record = {
        **made,
        "held_out": {s: [f[len(prefix) :].replace(os.sep, "/") for f in splits[s][0]] for s in made["made"]},
    }
    if index.get("split") != record:
        index["split"] = record
        _save_index(root, index, cache_dir)


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
