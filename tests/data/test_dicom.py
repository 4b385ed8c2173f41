"""DICOM through pydicom: rescale, windows, MONOCHROME1, multi-frame and damaged files, a missing pydicom.

The files are written by pydicom in the tests themselves (plus pydicom's bundled test files when present).
"""

import importlib.util
import sys

import numpy as np
import pytest
import torch
from disk_layouts import write_dicom

from rlmask.data import build_pool
from rlmask.data.dicom import dicom_shape, read_dicom
from rlmask.data.options import DataOptions
from rlmask.errors import UserError

# Every test but the missing-pydicom one needs pydicom (``pip install 'rlmask[dicom]'``, also in the test extra).
needs_pydicom = pytest.mark.skipif(importlib.util.find_spec("pydicom") is None, reason="pydicom is not installed")

RAMP = (np.arange(16, dtype=np.uint16) * 100).reshape(4, 4)  # stored values 0 .. 1500


@needs_pydicom
def test_rescale_and_the_file_window(tmp_path):
    # HU = 2 * stored - 1000: -1000 .. 2000; the file's window 500 +- 500 maps [0, 1000] HU onto 0..255.
    path = write_dicom(tmp_path / "ct.dcm", RAMP, slope=2, intercept=-1000, window=(500, 1000))
    hu = RAMP.astype(float) * 2 - 1000
    expected = (np.clip(hu / 1000, 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(read_dicom(str(path), "x"), expected)


@needs_pydicom
def test_window_option_overrides_the_file_and_min_max_without_one(tmp_path):
    windowed = write_dicom(tmp_path / "w.dcm", RAMP, window=(500, 1000))
    plain = write_dicom(tmp_path / "p.dcm", RAMP)
    wide = read_dicom(str(windowed), "x", window=(750, 1500))
    assert np.array_equal(wide, (RAMP / 1500 * 255).round().astype(np.uint8))
    assert np.array_equal(read_dicom(str(plain), "x"), wide)  # no window: the image's own range


@needs_pydicom
def test_monochrome1_is_inverted(tmp_path):
    normal = read_dicom(str(write_dicom(tmp_path / "m2.dcm", RAMP)), "x")
    inverted = read_dicom(str(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1")), "x")
    assert np.array_equal(inverted, 255 - normal)


@needs_pydicom
def test_rgb_dicom_is_colour(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 40
    path = write_dicom(tmp_path / "rgb.dcm", rgb)
    assert np.array_equal(read_dicom(str(path), "x"), rgb)
    assert dicom_shape(str(path), "x") == (4, 4, 3)  # counted as RGB by data info


@needs_pydicom
def test_signed_pixels(tmp_path):
    signed = (np.arange(16, dtype=np.int16) * 100 - 800).reshape(4, 4)
    out = read_dicom(str(write_dicom(tmp_path / "s.dcm", signed)), "x")
    assert out[0, 0] == 0 and out[-1, -1] == 255


@needs_pydicom
def test_dicom_folder_and_manifest_with_window_option(tmp_path):
    root = tmp_path / "ct"
    for cls in ("lung", "liver"):
        for i in range(4):
            write_dicom(root / cls / f"IM{i:04d}.dcm", RAMP + 10 * i, slope=1, intercept=-1024)
    pool = build_pool(
        [str(root)], image_size=8, options=DataOptions(window="-24,400", val_fraction=0.25, test_fraction=0.25)
    )
    assert {k: len(v) for k, v in pool.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert pool.channels == 1 and pool.info()["sources"][0]["native_shape"] == [4, 4, 1]
    x = pool.splits["train"].load(torch.arange(4))
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.uint8
    (tmp_path / "ct.csv").write_text(
        "path,label\n" + "".join(f"ct/{c}/IM{i:04d}.dcm,{c}\n" for c in ("lung", "liver") for i in range(4))
    )
    listed = build_pool([str(tmp_path / "ct.csv")], image_size=8, options=DataOptions(window="-24,400"))
    assert sum(len(s) for s in listed.splits.values()) == 8


@needs_pydicom
def test_multi_frame_and_damaged_files_are_refused(tmp_path):
    multi = write_dicom(tmp_path / "cine.dcm", RAMP, frames=3)
    with pytest.raises(UserError, match=r"^--data x: DICOM file .*cine.dcm has 3 frames; rlmask classifies 2-D"):
        read_dicom(str(multi), "x")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 64 + b"not a dicom file")
    with pytest.raises(UserError, match=r"^--data x: cannot decode DICOM file .*broken.dcm \(") as exc:
        read_dicom(str(broken), "x")
    assert "\n" not in str(exc.value)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(write_dicom(tmp_path / "whole.dcm", RAMP).read_bytes()[:-20])  # pixel data cut short
    with pytest.raises(UserError, match=r"cannot decode DICOM file .*cut.dcm"):
        read_dicom(str(cut), "x")


@needs_pydicom
def test_bad_window_option(tmp_path):
    write_dicom(tmp_path / "d" / "a" / "1.dcm", RAMP)
    for text in ("40", "40,abc", "40,-5"):
        with pytest.raises(UserError, match=rf"^--window {text}: "):
            build_pool([str(tmp_path / "d")], options=DataOptions(window=text))


def test_without_pydicom_a_one_line_hint(tmp_path, monkeypatch):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"\0" * 132)  # never read: the import fails first
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(UserError) as exc:
        read_dicom(str(path), "spec")
    assert (
        str(exc.value) == f"--data spec: {path} is a DICOM file; reading DICOM needs pydicom: "
        "pip install 'rlmask[dicom]'"
    )


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
@needs_pydicom
def test_pydicom_bundled_files(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom ships no {name}")
    import pydicom

    stored = pydicom.dcmread(path).pixel_array.astype(float)
    x = read_dicom(path, "bundled")
    assert x.dtype == np.uint8 and x.shape == stored.shape and x.max() > 200
    assert np.corrcoef(x.ravel(), stored.ravel())[0, 1] > 0.9  # a monotonic map of the stored values
