"""MedMNIST-layout ``.npz`` files: validation from the array headers, then lazy reading.

The file is checked (keys, shapes, dtypes, labels) from the ``.npy`` headers inside the zip and the
small label arrays before any image array is read, so a bad file fails fast and the pool reads one
big image array at a time.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from rlmask.data.source import RawSplit, Source
from rlmask.errors import UserError

SPLITS = ("train", "val", "test")

_ORGANS = [
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
]

# Official class names of the MedMNIST 2D multi-class datasets, in label order.
MEDMNIST_CLASSES: dict[str, list[str]] = {
    "pathmnist": [
        "adipose",
        "background",
        "debris",
        "lymphocytes",
        "mucus",
        "smooth muscle",
        "normal colon mucosa",
        "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ],
    "dermamnist": [
        "actinic keratoses and intraepithelial carcinoma",
        "basal cell carcinoma",
        "benign keratosis-like lesions",
        "dermatofibroma",
        "melanoma",
        "melanocytic nevi",
        "vascular lesions",
    ],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": [
        "basophil",
        "eosinophil",
        "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ],
    "tissuemnist": [
        "Collecting Duct, Connecting Tubule",
        "Distal Convoluted Tubule",
        "Glomerular endothelial cells",
        "Interstitial endothelial cells",
        "Leukocytes",
        "Podocytes",
        "Proximal Tubule Segments",
        "Thick Ascending Limb",
    ],
    "organamnist": _ORGANS,
    "organcmnist": _ORGANS,
    "organsmnist": _ORGANS,
}
# Multi-label datasets and their label width: rlmask trains single-label classifiers only.
MULTI_LABEL = {"chestmnist": 14}

_READ_ERRORS = (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError)


def dataset_stem(path: Path) -> str:
    """File stem without an optional ``_SIZE`` suffix (``pneumoniamnist_64`` -> ``pneumoniamnist``)."""
    return re.sub(r"_\d+$", "", path.stem)


def open_npz(path: Path, spec: str, name: str | None = None) -> Source:
    """Validate a MedMNIST-layout ``.npz`` file and return its lazily-read :class:`Source`.

    Raises UserError (message starting ``--data SPEC: ``) for a missing, corrupt or malformed file.
    """
    path = Path(path)

    def fail(what: str):
        raise UserError(f"--data {spec}: {what}")

    if path.is_dir():
        fail(f"{path} is a folder, not an .npz file (an image folder's name must not end in .npz)")
    if not path.is_file():
        fail("file not found")
    unreadable = f"{path} is not a readable .npz file (truncated or corrupt?)"
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            for key in [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]:
                if key not in members:
                    fail(f"has no key '{key}' (expected train/val/test _images/_labels)")
            shapes = {}
            for s in SPLITS:
                with zf.open(f"{s}_images.npy") as f:
                    shapes[s] = _npy_header(f)
        with np.load(path, allow_pickle=False) as z:
            labels = {s: z[f"{s}_labels"] for s in SPLITS}
            names = [str(c) for c in z["classes"].tolist()] if "classes" in z.files else None
    except UserError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):  # an object array: loading it would unpickle Python objects
            fail(
                f"{path} holds an object array (pickled Python objects), which rlmask never loads; store images, "
                "labels and classes as plain numeric or string arrays"
            )
        fail(unreadable)
    except _READ_ERRORS:
        fail(unreadable)

    native = None
    for s in SPLITS:
        shape, dtype = shapes[s]
        ok_shape = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
        if not ok_shape or dtype != np.uint8:
            fail(
                f"{s}_images has shape {tuple(shape)} and dtype {dtype}: "
                "expected uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3)"
            )
        hwc = (shape[1], shape[2], shape[3] if len(shape) == 4 else 1)
        if native is not None and hwc != native:
            fail(f"{s}_images has image shape {hwc} but train_images has {native}")
        native = hwc
        labels[s] = _check_labels(labels[s], shape[0], s, fail)

    stem = dataset_stem(path)
    if names is None and stem in MEDMNIST_CLASSES:
        names = MEDMNIST_CLASSES[stem]
    top = max(int(v.max()) if len(v) else -1 for v in labels.values())
    if names is None:
        names = [str(i) for i in range(top + 1)]
    if top >= len(names):
        fail(f"label {top} is out of range for {len(names)} classes")

    def reader(split: str):
        def read() -> np.ndarray:
            try:
                with np.load(path, allow_pickle=False) as z:
                    return z[f"{split}_images"]
            except _READ_ERRORS:
                fail(unreadable)

        return read

    splits = {s: RawSplit(labels=torch.from_numpy(labels[s]), read=reader(s)) for s in SPLITS}
    return Source(name=name or path.stem, spec=spec, classes=names, native_shape=native, splits=splits)


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a ``.npy`` stream, read from its header only."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def _check_labels(y: np.ndarray, n: int, split: str, fail) -> np.ndarray:
    """(N,) int64 labels from (N,) or (N, 1) integer labels; multi-label and bad values are errors."""
    if y.ndim == 2 and y.shape[1] > 1:
        fail(f"{split}_labels has shape {y.shape}: multi-label labels (N, {y.shape[1]}) are not supported")
    if y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        fail(f"{split}_labels has shape {y.shape} and dtype {y.dtype}: expected integer (N,) or (N, 1)")
    if len(y) != n:
        fail(f"{split}_images has {n} images but {split}_labels has {len(y)} labels")
    if len(y) and y.min() < 0:
        fail(f"{split}_labels has negative label {int(y.min())}")
    return y.astype(np.int64)
