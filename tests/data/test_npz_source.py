"""MedMNIST-layout .npz sources: real files, generated layouts, and every user error."""

import numpy as np
import pytest
import torch

from rlmask.data import build_pool
from rlmask.data.npz import MEDMNIST_CLASSES
from rlmask.data.source import LUMA
from rlmask.errors import UserError


@pytest.fixture(scope="module")
def pneumonia(shared_data):
    path = shared_data / "pneumoniamnist.npz"
    with np.load(path) as z:
        raw = {k: z[k] for k in z.files}
    return build_pool([str(path)]), raw


def test_real_pneumoniamnist(pneumonia):
    pool, raw = pneumonia
    assert pool.sources == ["pneumoniamnist"]
    assert pool.classes == ["pneumoniamnist/normal", "pneumoniamnist/pneumonia"]
    assert (pool.channels, pool.image_size) == (1, 28)
    for split in ("train", "val", "test"):
        s = pool.splits[split]
        assert len(s) == len(raw[f"{split}_images"])
        assert torch.equal(s.labels, torch.from_numpy(raw[f"{split}_labels"][:, 0].astype(np.int64)))
        assert s.paths is None
    idx = torch.tensor([0, 5, len(pool.splits["val"]) - 1])
    x = pool.splits["val"].load(idx)
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(raw["val_images"][idx.numpy()]))  # native size: exact


def test_info_counts(pneumonia):
    pool, raw = pneumonia
    info = pool.info()
    assert info["num_classes"] == 2 and info["sources"][0]["native_shape"] == [28, 28, 1]
    n_pneumonia = int((raw["test_labels"] == 1).sum())
    assert info["splits"]["test"]["per_class"]["pneumoniamnist/pneumonia"] == n_pneumonia
    assert info["splits"]["test"]["count"] == len(raw["test_labels"])


@pytest.mark.parametrize("channels,label_shape", [(None, "n"), (1, "n1"), (3, "n1")])
def test_generated_layouts(tmp_path, npz_writer, channels, label_shape):
    arrays = npz_writer(tmp_path / "toy.npz", channels=channels, label_shape=label_shape)
    pool = build_pool([str(tmp_path / "toy.npz")])
    assert pool.classes == ["toy/0", "toy/1", "toy/2"]  # no classes key, unknown stem: "0".."K-1"
    assert pool.channels == (3 if channels == 3 else 1) and pool.image_size == 8
    x = pool.splits["train"].load(torch.arange(4))
    want = torch.from_numpy(arrays["train_images"][:4])
    want = want.unsqueeze(1) if channels is None else want.permute(0, 3, 1, 2)
    assert torch.equal(x, want)


def test_classes_key_and_official_names(tmp_path, npz_writer):
    npz_writer(tmp_path / "named.npz", num_classes=2, classes=["cat", "dog"])
    npz_writer(tmp_path / "pneumoniamnist_64.npz", num_classes=2)  # known stem before the _SIZE suffix
    pool = build_pool([str(tmp_path / "named.npz"), str(tmp_path / "pneumoniamnist_64.npz")])
    assert pool.classes == ["named/cat", "named/dog"] + [
        f"pneumoniamnist_64/{c}" for c in MEDMNIST_CLASSES["pneumoniamnist"]
    ]
    assert torch.equal(pool.splits["train"].labels[:4], torch.tensor([0, 1, 0, 1]))
    assert set(pool.splits["train"].labels[12:].tolist()) == {2, 3}  # second source is offset


def test_rgb_to_grey_uses_luminance_and_grey_to_rgb_repeats(tmp_path, npz_writer):
    rgb = npz_writer(tmp_path / "rgb.npz", channels=3)
    npz_writer(tmp_path / "grey.npz")
    grey_pool = build_pool([str(tmp_path / "rgb.npz")], channels=1)
    want = (torch.from_numpy(rgb["train_images"]).float() * torch.tensor(LUMA)).sum(-1).round()
    assert torch.equal(grey_pool.splits["train"].load(torch.arange(12))[:, 0], want.to(torch.uint8))
    rgb_pool = build_pool([str(tmp_path / "grey.npz")], channels=3)
    x = rgb_pool.splits["train"].load(torch.arange(12))
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_resize_keeps_constant_images_constant(tmp_path, npz_writer):
    flat = np.full((4, 12, 12), 77, np.uint8)
    npz_writer(tmp_path / "flat.npz", counts=(4, 4, 4), side=12, train_images=flat, val_images=flat, test_images=flat)
    for size in (5, 31):
        x = build_pool([str(tmp_path / "flat.npz")], image_size=size).splits["val"].load(torch.arange(4))
        assert x.shape == (4, 1, size, size) and bool((x == 77).all())


def _error(spec, **kw):
    with pytest.raises(UserError) as exc:
        build_pool([spec], **kw)
    msg = str(exc.value)
    assert msg.startswith(f"--data {spec}: ") and "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    assert _error(str(tmp_path / "nope.npz")).endswith("file not found")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "is not a readable .npz file (truncated or corrupt?)" in _error(str(bad))


def test_truncated_real_file(tmp_path, shared_data):
    data = (shared_data / "pneumoniamnist.npz").read_bytes()
    cut = tmp_path / "pneumoniamnist.npz"
    cut.write_bytes(data[: len(data) // 2])
    assert "is not a readable .npz file (truncated or corrupt?)" in _error(str(cut))


def test_missing_key(tmp_path, npz_writer):
    npz_writer(tmp_path / "nokey.npz", val_images=None)
    assert "has no key 'val_images' (expected train/val/test _images/_labels)" in _error(str(tmp_path / "nokey.npz"))


def test_multi_label_rejected(tmp_path, npz_writer):
    multi = {f"{s}_labels": np.zeros((n, 14), np.uint8) for s, n in (("train", 12), ("val", 4), ("test", 4))}
    npz_writer(tmp_path / "chestmnist.npz", **multi)
    assert "multi-label labels (N, 14) are not supported" in _error(str(tmp_path / "chestmnist.npz"))


def test_length_mismatch(tmp_path, npz_writer):
    npz_writer(tmp_path / "short.npz", val_labels=np.zeros((3, 1), np.uint8))
    assert "val_images has 4 images but val_labels has 3 labels" in _error(str(tmp_path / "short.npz"))


@pytest.mark.parametrize(
    "images,what",
    [
        (np.zeros((12, 8, 8), np.float32), "dtype float32"),
        (np.zeros((12, 8, 8, 2), np.uint8), "shape (12, 8, 8, 2)"),
        (np.zeros((12, 8), np.uint8), "shape (12, 8)"),
    ],
)
def test_bad_image_arrays(tmp_path, npz_writer, images, what):
    npz_writer(tmp_path / "bad.npz", train_images=images)
    msg = _error(str(tmp_path / "bad.npz"))
    assert "train_images" in msg and what in msg


def test_label_out_of_range_for_classes(tmp_path, npz_writer):
    npz_writer(tmp_path / "few.npz", num_classes=3, classes=["a", "b"])
    assert "label 2 is out of range for 2 classes" in _error(str(tmp_path / "few.npz"))


def test_not_a_source(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a .npz file or an image folder" in _error(str(tmp_path / "notes.txt"))
    assert "not found" in _error(str(tmp_path / "nothing-here"))
