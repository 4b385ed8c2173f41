"""CSV / TSV manifests: one row per image with its path, its label and optionally its split.

Spec: ``labels.csv`` (or ``.tsv``), or ``csv:FILE?path=COL&label=COL&split=COL&sep=;`` to name the columns
(``tsv:FILE`` reads tab-separated text). Paths are relative to the manifest's folder (absolute ones are
used as they are); labels are taken verbatim as class names. Without a split column the files get the same
seeded, stratified split as class folders. Columns not named are found by their names (``path``,
``image_path``, ``filename``, ... and ``label``, ``class``, ``target``, ``diagnosis``, ...), or, for the
path, by values that end in an image extension.

A bad row (empty path or label, a missing file, a file listed twice) stops with an error naming its line,
unless ``--skip-bad-rows``: then such rows are dropped and counted in the log.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch

from rlmask.data.filters import FileFilter
from rlmask.data.folder import file_shape
from rlmask.data.options import DataOptions
from rlmask.data.source import RawSplit, Source
from rlmask.data.split import SPLIT_ALIASES, complete_splits, split_name
from rlmask.errors import UserError

MANIFEST_EXTENSIONS = (".csv", ".tsv")
# Column names that say what a column holds, most specific first (compared lower-case, "-"/" " as "_").
PATH_COLUMNS = (
    "path",
    "image_path",
    "img_path",
    "file_path",
    "filepath",
    "image",
    "img",
    "image_file",
    "file",
    "filename",
    "file_name",
    "fname",
)
LABEL_COLUMNS = ("label", "class", "target", "diagnosis", "class_name", "classname", "category", "labels", "y")
SPLIT_COLUMNS = ("split", "set", "subset", "partition")
_KEYS = ("path", "label", "split", "sep")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


def is_manifest_spec(spec: str) -> bool:
    """True for ``csv:...``/``tsv:...`` and for paths ending in .csv or .tsv (before an optional ``?query``)."""
    low = spec.lower()
    return low.startswith(("csv:", "tsv:")) or low.partition("?")[0].endswith(MANIFEST_EXTENSIONS)


def parse_manifest_spec(spec: str) -> tuple[Path, dict[str, str], str | None]:
    """(manifest path, {"path"/"label"/"split"/"sep": value}, forced kind "csv"/"tsv" or None)."""
    text, kind = spec, None
    if spec.lower().startswith(("csv:", "tsv:")):
        kind, text = spec[:3].lower(), spec[4:]
    file, _, query = text.partition("?")
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _KEYS:
            raise UserError(
                f"--data {spec}: unknown manifest option {key!r} (expected {', '.join(_KEYS)}: "
                "csv:FILE?path=COL&label=COL&split=COL)"
            )
        params[key] = value
    if not file:
        raise UserError(f"--data {spec}: no manifest file given (csv:FILE?path=COL&label=COL)")
    return Path(file).expanduser(), params, kind


def open_manifest(spec: str, options: DataOptions | None = None, seed: int = 0) -> Source:
    """Read and check a CSV/TSV manifest and return its folder-backed :class:`Source`."""
    options = options or DataOptions()
    path, params, kind = parse_manifest_spec(spec)
    if not path.is_file():
        raise UserError(f"--data {spec}: manifest {path} not found")
    header, rows = _read_rows(path, spec, params.get("sep"), kind)
    columns = {key: _column(key, params.get(key), header, rows, path, spec) for key in ("path", "label", "split")}
    if columns["path"] == columns["label"]:
        raise UserError(
            f"--data {spec}: {path}: the path and the label cannot both be column {header[columns['path']]!r}"
        )

    base = str(path.resolve().parent)
    filt = FileFilter(options.exclude, options.keep_masks)
    bad: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    kept: list[tuple[str, str, str]] = []  # (absolute file, label, split or "")
    for line, row in rows:
        row = row + [""] * (len(header) - len(row))
        rel, label = row[columns["path"]].strip(), row[columns["label"]].strip()
        split = ""
        if columns["split"] is not None:
            value = row[columns["split"]].strip()
            split = split_name(value) or ""
            if not split:  # a typo in a split column is never a row to drop: it would move files silently
                raise UserError(
                    f"--data {spec}: {path} line {line}: unknown split {value!r} in column "
                    f"{header[columns['split']]!r} (expected {'|'.join(SPLIT_ALIASES)})"
                )
        if not rel:
            bad.append((line, f"empty path in column {header[columns['path']]!r}"))
            continue
        if not filt.keep(rel.replace("\\", "/")):
            continue
        full = _locate(base, rel)
        if not label:
            bad.append((line, f"empty label in column {header[columns['label']]!r}"))
        elif full is None:
            bad.append((line, f"file {rel} not found (relative to {base})"))
        elif full in seen:
            bad.append((line, f"file {rel} is already listed on line {seen[full]}"))
        else:
            seen[full] = line
            kept.append((full, label, split))
    warnings = filt.warnings()
    if bad:
        first = f"{path} line {bad[0][0]}: {bad[0][1]}"
        if not options.skip_bad_rows:
            more = f"; {len(bad) - 1} more bad row(s)" if len(bad) > 1 else ""
            raise UserError(f"--data {spec}: {first}{more} (--skip-bad-rows drops them)")
        warnings.insert(0, f"skipped {len(bad)} bad row(s) of {len(rows)} (--skip-bad-rows), first: {first}")
    filt.check_not_empty(len(kept), spec)
    if not kept:
        raise UserError(f"--data {spec}: {path} lists no images")

    classes = _class_order({label for _, label, _ in kept})
    lookup = {c: i for i, c in enumerate(classes)}
    kept.sort()  # by path: the split is a function of the sorted file list, not of the row order
    given: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in ("train", "val", "test", ""):
        members = [(f, lookup[label]) for f, label, s in kept if s == name]
        if members:
            given[name or "train"] = ([f for f, _ in members], np.array([k for _, k in members], dtype=np.int64))
    if "train" not in given:
        raise UserError(f"--data {spec}: {path}: no row has the split train (column {header[columns['split']]!r})")
    split_seed = options.split_seed if options.split_seed is not None else seed
    given, made = complete_splits(given, classes, options.val_fraction, options.test_fraction, split_seed, spec)
    splits = {
        s: RawSplit(labels=torch.from_numpy(given[s][1]), files=given[s][0])
        for s in ("train", "val", "test")
        if s in given
    }
    named = ", ".join(f"{k}={header[c]}" for k, c in columns.items() if c is not None)
    details = {
        "layout": f"manifest ({named})",
        "split": made,
        "rows": len(rows),
        "skipped_rows": len(bad),
        **filt.report(),
        "warnings": warnings,
    }
    return Source(
        name=manifest_name(path),
        spec=spec,
        classes=classes,
        native_shape=file_shape(splits["train"].files[0], spec),
        splits=splits,
        details=details,
    )


def manifest_name(path: Path) -> str:
    """The source's name: the file's stem, or its folder's name for generic stems (``busi/labels.csv`` -> busi)."""
    generic = {"labels", "label", "manifest", "metadata", "meta", "data", "dataset", "index", "annotations", "images"}
    return path.resolve().parent.name if path.stem.lower() in generic and path.resolve().parent.name else path.stem


def _read_rows(
    path: Path, spec: str, sep: str | None, kind: str | None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of the manifest; blank lines are skipped, line numbers are 1-based."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark from Excel
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--data {spec}: cannot read manifest {path} ({e})") from None
    first = text.split("\n", 1)[0]
    if sep is not None:
        delimiter = "\t" if sep.lower() in ("tab", "\\t", "\t") else sep
    elif kind == "tsv" or path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:  # commas unless the header is only separated by tabs or semicolons
        delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    if len(delimiter) != 1:
        raise UserError(f"--data {spec}: sep={sep!r} must be one character (or 'tab')")
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except StopIteration:
        raise UserError(f"--data {spec}: manifest {path} is empty") from None
    except csv.Error as e:
        raise UserError(f"--data {spec}: {path} line {reader.line_num}: {e}") from None
    return header, rows


def _normal(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _column(key: str, given: str | None, header: list[str], rows: list, path: Path, spec: str) -> int | None:
    """Index of the manifest's ``key`` column: named in the spec, else found by name (or content, for paths)."""
    listing = ", ".join(repr(h) for h in header)
    if given is not None:
        for i, h in enumerate(header):
            if h == given or _normal(h) == _normal(given):
                return i
        raise UserError(f"--data {spec}: {path} has no column {given!r} (columns: {listing})")
    names = {"path": PATH_COLUMNS, "label": LABEL_COLUMNS, "split": SPLIT_COLUMNS}[key]
    normal = [_normal(h) for h in header]
    for name in names:
        if name in normal:
            return normal.index(name)
    if key == "split":
        return None  # optional: the seeded split
    if key == "path":  # a column whose values look like image files
        for i in range(len(header)):
            values = [r[i].strip().lower() for _, r in rows[:50] if i < len(r) and r[i].strip()]
            if values and all(v.endswith(_IMAGE_SUFFIXES) for v in values):
                return i
    raise UserError(
        f"--data {spec}: {path}: cannot tell which column holds the {key}s (columns: {listing}); "
        f"name it: csv:{path}?{key}=COLUMN"
    )


def _locate(base: str, rel: str) -> str | None:
    """Absolute path of a manifest's file, or None when it does not exist (Windows separators accepted)."""
    for candidate in (rel, rel.replace("\\", "/")):
        full = os.path.normpath(candidate if os.path.isabs(candidate) else os.path.join(base, candidate))
        if os.path.isfile(full):
            return full
    return None


def _class_order(labels: set[str]) -> list[str]:
    """Class names in numeric order when every label is an integer (2 before 10), else alphabetical."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)
