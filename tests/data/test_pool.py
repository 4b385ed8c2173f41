"""The pool: union of sources, namespaced classes, one size and channel count, subsampling."""

import numpy as np
import pytest
import torch

from rlmask.data import build_pool
from rlmask.errors import UserError

SIX = ["organamnist", "bloodmnist", "pneumoniamnist", "breastmnist", "retinamnist", "mednist64"]


@pytest.fixture(scope="module")
def six(shared_data):
    """The six real files as one pool at 28 px, built once (about 100k images)."""
    return build_pool([str(shared_data / f"{n}.npz") for n in SIX], image_size=28)


def test_six_file_pool(six, shared_data):
    pool = six
    assert pool.sources == SIX and len(pool.classes) == 34
    assert (pool.channels, pool.image_size) == (3, 28)  # blood and retina are RGB
    assert pool.classes[:2] == ["organamnist/bladder", "organamnist/femur-left"]
    mednist = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
    assert pool.classes[-6:] == [f"mednist64/{c}" for c in mednist]
    info = pool.info()
    assert [s["native_shape"] for s in info["sources"]][-1] == [64, 64, 1]
    for name in ("breastmnist", "retinamnist"):  # the small ones: compare against the file itself
        with np.load(shared_data / f"{name}.npz") as z:
            y = z["test_labels"][:, 0]
            first = pool.classes.index(next(c for c in pool.classes if c.startswith(name + "/")))
            for k in range(int(y.max()) + 1):
                assert info["splits"]["test"]["per_class"][pool.classes[first + k]] == int((y == k).sum())
    assert sum(info["splits"]["train"]["per_class"].values()) == len(pool.splits["train"])


def test_six_file_pool_images(six, shared_data):
    pool = six
    test = pool.splits["test"]
    with np.load(shared_data / "breastmnist.npz") as z:
        breast = z["test_images"]
    with np.load(shared_data / "retinamnist.npz") as z:
        retina = z["test_images"]
    counts = pool.info()["splits"]["test"]["per_class"]
    start = {}
    offset = 0
    for name in SIX:  # parts follow --data order
        start[name] = offset
        offset += sum(v for c, v in counts.items() if c.startswith(name + "/"))
    idx = torch.tensor([start["breastmnist"] + 3, start["retinamnist"] + 7, start["breastmnist"]])
    x = test.load(idx)  # (3, 3, 28, 28) mixed parts in one call
    assert torch.equal(x[0], torch.from_numpy(breast[3]).expand(3, 28, 28))  # grey repeated on 3 channels
    assert torch.equal(x[1], torch.from_numpy(retina[7]).permute(2, 0, 1))
    assert torch.equal(x[2], torch.from_numpy(breast[0]).expand(3, 28, 28))


def test_union_offsets_duplicate_names_and_defaults(tmp_path, npz_writer):
    npz_writer(tmp_path / "a.npz", side=8, num_classes=2)
    (tmp_path / "b").mkdir()
    rgb = npz_writer(tmp_path / "b" / "a.npz", side=12, channels=3, num_classes=3)
    pool = build_pool([str(tmp_path / "a.npz"), str(tmp_path / "b" / "a.npz"), "synthetic:n=2,size=10"])
    assert pool.sources == ["a", "a-2", "synthetic"]
    assert pool.classes[:5] == ["a/0", "a/1", "a-2/0", "a-2/1", "a-2/2"] and len(pool.classes) == 5 + 12
    assert (pool.image_size, pool.channels) == (12, 3)  # largest native side; any RGB -> 3
    train = pool.splits["train"]
    assert len(train) == 12 + 12 + 24
    assert torch.equal(train.labels[12:24], torch.from_numpy(np.arange(12) % 3 + 2))
    x = train.load(torch.tensor([13, 30]))
    assert torch.equal(x[0], torch.from_numpy(rgb["train_images"][1]).permute(2, 0, 1))  # native 12 px: exact
    assert x.shape == (2, 3, 12, 12) and torch.equal(x[1, 0], x[1, 2])  # synthetic grey repeated


def test_sources_without_test_split(tmp_path, image_writer):
    for split in ("train", "val"):
        image_writer(tmp_path / "f" / split / "x" / "0.png", np.zeros((8, 8), np.uint8))
    only_folder = build_pool([str(tmp_path / "f")], cache_dir=tmp_path / "c")
    assert set(only_folder.splits) == {"train", "val"}
    mixed = build_pool([str(tmp_path / "f"), "synthetic:n=1"], cache_dir=tmp_path / "c")
    assert len(mixed.splits["test"]) == 12 * 8 and int(mixed.splits["test"].labels.min()) == 1
    assert mixed.splits["train"].paths[0].endswith("0.png") and mixed.splits["train"].paths[1] is None


def test_subsample_per_class():
    pool = build_pool(["synthetic:n=20,size=8"])
    small = pool.subsample("train", 5, seed=0)
    y = small.splits["train"].labels
    assert torch.equal(torch.bincount(y), torch.full((12,), 5))
    assert small.splits["val"] is pool.splits["val"]
    again = pool.subsample("train", 5, seed=0).splits["train"]
    other = pool.subsample("train", 5, seed=1).splits["train"]
    idx = torch.arange(len(y))
    assert torch.equal(again.load(idx), small.splits["train"].load(idx))
    assert not torch.equal(other.load(idx), small.splits["train"].load(idx))
    assert len(pool.subsample("train", 1000, seed=0).splits["train"]) == len(pool.splits["train"])


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(specs=[]), "--data: give at least one data source"),
        (dict(specs=["synthetic"], image_size=0), "--image-size 0: must be a positive integer"),
        (dict(specs=["synthetic"], channels=2), "--channels 2: must be 1 or 3"),
    ],
)
def test_bad_options(kwargs, msg):
    with pytest.raises(UserError, match="^" + msg):
        build_pool(**kwargs)
