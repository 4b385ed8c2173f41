"""DICOM files (``.dcm``) as 8-bit images, through the optional ``pydicom`` (``pip install 'rlmask[dicom]'``).

Grey images go the way a radiologist's viewer takes them: stored values -> rescale slope/intercept
(Hounsfield units for CT) -> a window (``--window CENTER,WIDTH``, else the file's own, else the image's
min-max) mapped linearly onto 0..255 -> MONOCHROME1 inverted, so bright always means dense. Colour
images (RGB, YBR, palette) come out as RGB. Multi-frame files are refused: rlmask classifies 2-D images.
"""

from __future__ import annotations

import numpy as np

from rlmask.errors import UserError, reason

DICOM_EXTENSIONS = (".dcm", ".dicom")


def is_dicom_path(path: str) -> bool:
    return path.lower().endswith(DICOM_EXTENSIONS)


def _pydicom(path: str, spec: str):
    try:
        import pydicom
    except ImportError:
        raise UserError(
            f"--data {spec}: {path} is a DICOM file; reading DICOM needs pydicom: pip install 'rlmask[dicom]'"
        ) from None
    return pydicom


def _read(path: str, spec: str, pixels: bool):
    pydicom = _pydicom(path, spec)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except Exception as e:  # pydicom raises many types for a damaged file; the user needs the file's name
        raise UserError(f"--data {spec}: cannot decode DICOM file {path} ({_reason(e)})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UserError(
            f"--data {spec}: DICOM file {path} has {frames} frames; rlmask classifies 2-D images "
            "(export one frame per file)"
        )
    return ds


def _reason(e: Exception) -> str:
    text = reason(e) if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def dicom_shape(path: str, spec: str) -> tuple[int, int, int]:
    """(H, W, C) of a DICOM file from its header only (C = 3 for colour, else 1)."""
    ds = _read(path, spec, pixels=False)
    try:
        return (
            int(ds.Rows),
            int(ds.Columns),
            3
            if int(ds.get("SamplesPerPixel", 1) or 1) == 3
            or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
            else 1,
        )
    except (AttributeError, TypeError, ValueError) as e:
        raise UserError(f"--data {spec}: cannot decode DICOM file {path} ({_reason(e)})") from None


def read_dicom(path: str, spec: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 (H, W) grey or (H, W, 3) RGB pixels of a single-frame DICOM file."""
    ds = _read(path, spec, pixels=True)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        a = ds.pixel_array  # pydicom >= 3 converts YBR colour to RGB here
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            a = apply_color_lut(a, ds)
    except Exception as e:  # missing pixel data, an unsupported compression, truncated pixels, ...
        raise UserError(f"--data {spec}: cannot decode DICOM file {path} ({_reason(e)})") from None
    if a.ndim == 3 and a.shape[-1] == 3:  # colour: scale the stored bit depth onto 8 bits
        if a.dtype == np.uint8:
            return a
        if photometric == "PALETTE COLOR":  # the LUT's entries are 8- or 16-bit
            top = 65535 if a.max() > 255 else 255
        else:
            top = 2 ** int(ds.get("BitsStored", 16) or 16) - 1
        return (a.astype(np.float64) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)
    if a.ndim != 2:
        raise UserError(
            f"--data {spec}: DICOM file {path} has pixel shape {tuple(a.shape)}; rlmask reads 2-D grey or RGB images"
        )
    x = a.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    center_width = window or _file_window(ds)
    if center_width is None:  # no window anywhere: the image's own range
        lo, hi = float(x.min()), float(x.max())
    else:
        center, width = center_width
        lo, hi = center - width / 2, center + width / 2
    y = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":  # stored with white = lowest value: invert so bright means dense
        y = 1 - y
    return (y * 255).round().astype(np.uint8)


def _file_window(ds) -> tuple[float, float] | None:
    """The file's first (WindowCenter, WindowWidth), None when absent or unusable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None
