"""Helpers for the data tests: small MedMNIST-layout files and image folders written into tmp_path."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_npz(
    path: Path,
    counts=(12, 4, 4),
    side: int = 8,
    channels: int | None = None,
    num_classes: int = 3,
    classes=None,
    seed: int = 0,
    label_shape: str = "n1",
    **override,
) -> dict:
    """Write a MedMNIST-layout file; channels None -> (N,H,W), 1 -> (N,H,W,1), 3 -> (N,H,W,3).

    Returns the arrays written (after ``override``), so tests compare against exactly what is on disk.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, side, side) if channels is None else (n, side, side, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        y = np.arange(n) % num_classes  # every class present in every split
        arrays[f"{split}_labels"] = (y[:, None] if label_shape == "n1" else y).astype(np.uint8)
    if classes is not None:
        arrays["classes"] = np.array(classes)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def write_image(path: Path, array: np.ndarray) -> Path:
    """Save ``array`` with PIL (mode from the array: uint8 L/RGB/RGBA, uint16 I;16; format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def npz_writer():
    return write_npz


@pytest.fixture
def image_writer():
    return write_image
