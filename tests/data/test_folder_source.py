"""Image folders (RadImageNet layout): real PNG/JPEG files, nested classes, modes, index cache, errors."""

import numpy as np
import pytest
import torch

import rlmask.data.folder as folder
from rlmask.data import BatchLoader, build_pool
from rlmask.errors import UserError

GREY = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (16, 1))  # (16, 16) horizontal ramp


def _rgb():
    a = np.zeros((16, 16, 3), np.uint8)
    a[..., 0], a[..., 2] = 200, 50
    return a


def _rgba():
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., 1], a[..., 3] = 180, 255
    a[:, :8, 3] = 0  # left half fully transparent: composited on black
    a[:, :8, 0] = 255
    return a


@pytest.fixture
def tree(tmp_path, image_writer):
    root = tmp_path / "radimg"
    w = image_writer
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            w(root / split / "CT" / "liver" / f"{i}.png", GREY)
            w(root / split / "CT" / "lung" / f"{i}.jpg", _rgb())
            w(root / split / "MR" / f"{i}.png", _rgba())
            w(root / split / "US" / f"{i}.tiff", (np.arange(256, dtype=np.uint16).reshape(16, 16) * 15))
    (root / "train" / "MR" / "notes.txt").write_text("not an image: ignored")
    return root


def test_classes_labels_and_paths(tree, tmp_path):
    pool = build_pool([str(tree)], image_size=8, channels=3, cache_dir=tmp_path / "cache")
    assert pool.sources == ["radimg"]
    assert pool.classes == ["radimg/CT/liver", "radimg/CT/lung", "radimg/MR", "radimg/US"]
    assert set(pool.splits) == {"train", "val"}  # no test/ folder: no test split
    train = pool.splits["train"]
    assert len(train) == 12 and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert train.paths[3].endswith("lung/0.jpg")
    x = train.load(torch.arange(12))
    assert x.shape == (12, 3, 8, 8) and x.dtype == torch.uint8


def test_modes_are_converted(tree, tmp_path):
    pool = build_pool([str(tree)], image_size=16, channels=3, cache_dir=tmp_path)
    x = pool.splits["val"].load(torch.arange(4)).int()  # liver grey, lung RGB jpeg, MR RGBA, US 16-bit
    assert torch.equal(x[0, 0], torch.from_numpy(GREY).int()) and torch.equal(x[0, 0], x[0, 2])
    assert abs(x[1, 0].float().mean().item() - 200) < 3 and abs(x[1, 2].float().mean().item() - 50) < 3
    assert x[2, :, :, :8].max() == 0  # transparent red became black
    assert torch.equal(x[2, :, :, 8:], torch.tensor([0, 180, 0]).view(3, 1, 1).expand(3, 16, 8).int())
    assert x[3].min() == 0 and x[3].max() == 255  # 16-bit scaled by its own range
    grey = build_pool([str(tree)], image_size=16, channels=1, cache_dir=tmp_path).splits["val"].load(torch.arange(4))
    assert grey.shape == (4, 1, 16, 16)
    assert abs(grey[1].float().mean().item() - (0.299 * 200 + 0.114 * 50)) < 3


def test_defaults_from_first_training_image(tree, tmp_path):
    pool = build_pool([str(tree)], cache_dir=tmp_path)  # first train image is the 16x16 grey liver
    assert (pool.image_size, pool.channels) == (16, 1)
    assert pool.info()["sources"][0]["native_shape"] == [16, 16, 1]


def test_index_cache_is_reused_and_invalidated(tree, tmp_path, monkeypatch, image_writer):
    cache = tmp_path / "cache"
    build_pool([str(tree)], cache_dir=cache)
    assert len(list((cache / "folder-index").glob("*.json"))) == 1

    def no_walk(*args):
        raise AssertionError("the folder was walked again")

    monkeypatch.setattr(folder.os, "scandir", no_walk)
    assert len(build_pool([str(tree)], cache_dir=cache).splits["train"]) == 12  # from the cache
    monkeypatch.undo()
    image_writer(tree / "train" / "CT" / "liver" / "new.png", GREY)  # changes that folder's mtime
    assert len(build_pool([str(tree)], cache_dir=cache).splits["train"]) == 13


def test_test_split_is_used_when_present(tree, tmp_path, image_writer):
    image_writer(tree / "test" / "MR" / "a.png", _rgba())
    pool = build_pool([str(tree)], cache_dir=tmp_path)
    assert len(pool.splits["test"]) == 1 and pool.splits["test"].labels.tolist() == [2]


def _error(spec, cache):
    with pytest.raises(UserError) as exc:
        build_pool([spec], cache_dir=cache)
    assert str(exc.value).startswith(f"--data {spec}: ") and "\n" not in str(exc.value)
    return str(exc.value)


def test_empty_class_folder(tree, tmp_path):
    (tree / "val" / "CT" / "kidney").mkdir()
    msg = _error(str(tree), tmp_path)
    assert "kidney has no images" in msg and str(tree / "val" / "CT" / "kidney") in msg


def test_train_only_gets_a_seeded_val_and_test_split(tree, tmp_path):
    import shutil

    shutil.rmtree(tree / "val")  # train/ alone: val and test are split off it, 3 images per class
    pool = build_pool([str(tree)], cache_dir=tmp_path)
    assert {k: len(v) for k, v in pool.splits.items()} == {"train": 4, "val": 4, "test": 4}


def test_split_folders_without_train(tree, tmp_path):
    (tree / "train").rename(tree / "Testing")
    assert "but no train/ (or training/) folder" in _error(str(tree), tmp_path)


def test_undecodable_image(tree, tmp_path):
    bad = tree / "val" / "MR" / "broken.png"
    bad.write_bytes(b"this is not a png")
    pool = build_pool([str(tree)], image_size=8, cache_dir=tmp_path)
    val = pool.splits["val"]
    i = val.paths.index(str(bad))
    with pytest.raises(UserError, match=rf"^--data {tree}: cannot decode image {bad} "):
        val.load(torch.tensor([i]))
    for workers in (0, 1):  # also from a DataLoader worker: one line, same type
        loader = BatchLoader(val, 8, shuffle=False, seed=0, drop_last=False, num_workers=workers)
        with pytest.raises(UserError, match=rf"cannot decode image {bad} ") as exc:
            list(loader.epoch(0))
        assert "\n" not in str(exc.value)
