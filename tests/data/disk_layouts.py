"""The three datasets of issue 14 as they are distributed, from small generated images, and DICOM files.

Same folder and file naming as the public releases: brain-tumour MRI (``Training/``, ``Testing/``), breast
ultrasound (class folders with ``*_mask.png`` beside the images, and a CSV), lung histology (class folders).
"""

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, array: np.ndarray) -> Path:
    """Save ``array`` with PIL (mode from the array; format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _noise(rng, side: int, rgb: bool = False) -> np.ndarray:
    return rng.integers(0, 256, (side, side, 3) if rgb else (side, side), dtype=np.uint8)


def make_brain_mri(root: Path, train_per_class: int = 10, test_per_class: int = 3, rgb_every: int = 4) -> Path:
    """Brain-tumour MRI layout: ``Training/<class>/Tr-xx_0001.jpg`` and ``Testing/<class>/Te-xx_0001.jpg``.

    Grey JPEGs with every ``rgb_every``-th training file saved as RGB, like the MRI exports that mix both.
    """
    rng = np.random.default_rng(1)
    for cls, tag in (("glioma", "gl"), ("meningioma", "me"), ("notumor", "no"), ("pituitary", "pi")):
        for i in range(train_per_class):
            write_image(root / "Training" / cls / f"Tr-{tag}_{i + 1:04d}.jpg", _noise(rng, 12, rgb=i % rgb_every == 3))
        for i in range(test_per_class):
            write_image(root / "Testing" / cls / f"Te-{tag}_{i + 1:04d}.jpg", _noise(rng, 12))
    return root


def make_busi(root: Path, per_class=(6, 5, 4)) -> Path:
    """Breast-ultrasound layout: ``<class>/<class> (N).png`` with ``<class> (N)_mask.png`` beside each image
    (and a second ``_mask_1.png`` for the first malignant one), plus ``labels.csv`` of
    ``image_path,text_caption,label``."""
    rng = np.random.default_rng(2)
    rows = ["image_path,text_caption,label"]
    for cls, n in zip(("benign", "malignant", "normal"), per_class):
        for i in range(1, n + 1):
            write_image(root / cls / f"{cls} ({i}).png", _noise(rng, 14))
            write_image(root / cls / f"{cls} ({i})_mask.png", (rng.random((14, 14)) > 0.5).astype(np.uint8) * 255)
            rows.append(f'{cls}/{cls} ({i}).png,"an ultrasound image, {cls} tissue",{cls}')
    write_image(root / "malignant" / "malignant (1)_mask_1.png", np.zeros((14, 14), np.uint8))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def make_lung_histology(root: Path, per_class: int = 10) -> Path:
    """Lung-histology layout: plain class folders ``lung_aca/``, ``lung_n/``, ``lung_scc/`` of RGB JPEGs."""
    rng = np.random.default_rng(3)
    for cls in ("lung_aca", "lung_n", "lung_scc"):
        for i in range(1, per_class + 1):
            write_image(root / cls / f"{cls.replace('_', '')}{i}.jpeg", _noise(rng, 10, rgb=True))
    return root


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
) -> Path:
    """Write a single- (or multi-) frame uncompressed DICOM file with pydicom: uint16/int16 grey pixels
    (H, W), or uint8 RGB (H, W, 3)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    stack = np.stack([pixels] * frames) if frames > 1 else pixels
    ds.Rows, ds.Columns = pixels.shape[:2]
    if pixels.ndim == 3:  # (H, W, 3) uint8: RGB, pixel-interleaved
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(stack).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
