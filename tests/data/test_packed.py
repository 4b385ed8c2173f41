"""Packed folders: pack once, then read the memory-mapped shards as a ``--data`` spec."""

import json
import pickle

import numpy as np
import pytest
import torch

from rlmask.data import build_pool
from rlmask.data.packed import PackedPart, pack_folder
from rlmask.data.pool import open_source
from rlmask.data.source import resize_images
from rlmask.errors import UserError

COUNTS = {"train": 6, "val": 2, "test": 1}  # per class; 3 classes -> 18 / 6 / 3 images


@pytest.fixture
def tree(tmp_path, image_writer):
    """A RadImageNet-layout folder of 27 random 12-px PNGs: two RGB classes and one grey class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "radimg"
    for split, n in COUNTS.items():
        for i in range(n):
            image_writer(root / split / "CT" / "liver" / f"{i}.png", rng.integers(0, 256, (12, 12, 3), np.uint8))
            image_writer(root / split / "CT" / "lung" / f"{i}.png", rng.integers(0, 256, (12, 12, 3), np.uint8))
            image_writer(root / split / "MR" / f"{i}.png", rng.integers(0, 256, (12, 12), np.uint8))
    return root


def _everything(split):
    return split.load(torch.arange(len(split)))


@pytest.mark.parametrize("workers", [0, 2])
def test_pack_matches_folder_pool(tree, tmp_path, workers):
    out = tmp_path / "packed"
    meta = pack_folder(str(tree), out, 12, shard_size=5, num_workers=workers)
    assert (meta["format"], meta["version"], meta["channels"], meta["image_size"]) == ("rlmask-packed", 1, 3, 12)
    folder = build_pool([str(tree)], image_size=12, channels=3, cache_dir=tmp_path / "cache")
    packed = build_pool([str(out)], cache_dir=tmp_path / "cache")  # size and channels from the pack
    assert (packed.image_size, packed.channels) == (12, 3)
    assert packed.classes == folder.classes == ["radimg/CT/liver", "radimg/CT/lung", "radimg/MR"]
    assert set(packed.splits) == set(folder.splits) == set(COUNTS)
    for name in COUNTS:
        assert torch.equal(packed.splits[name].labels, folder.splits[name].labels)
        assert torch.equal(_everything(packed.splits[name]), _everything(folder.splits[name]))
    assert not packed.splits["train"].has_files and packed.splits["train"].paths is None


def test_shards_split_at_shard_size(tree, tmp_path):
    out = tmp_path / "packed"
    pack_folder(str(tree), out, 12, shard_size=5)
    meta = json.loads((out / "meta.json").read_text())
    for name, per_class in COUNTS.items():
        n = 3 * per_class
        shards = meta["splits"][name]["shards"]
        assert meta["splits"][name]["count"] == n
        assert [s["count"] for s in shards] == [min(5, n - s) for s in range(0, n, 5)]
        assert [s["file"] for s in shards] == [f"{name}-{k:05d}.npy" for k in range(len(shards))]
        for s in shards:
            a = np.load(out / s["file"])
            assert a.shape == (s["count"], 3, 12, 12) and a.dtype == np.uint8
        labels = np.load(out / meta["splits"][name]["labels_file"])
        assert labels.dtype == np.int64 and labels.tolist() == sorted(list(range(3)) * per_class)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "radimg"]  # no temporary folder left


def test_memory_mapped_subset_resize_and_pickle(tree, tmp_path):
    out = tmp_path / "packed"
    pack_folder(str(tree), out, 12, shard_size=5)
    raw = open_source(str(out)).splits["train"]
    assert raw.shards and all(isinstance(s, np.memmap) for s in raw.shards)  # not read into memory
    pool = build_pool([str(out)])
    train = pool.splits["train"]
    full = _everything(train)  # (18, 3, 12, 12)

    keep = torch.tensor([1, 4, 5, 11, 17])  # crosses shard boundaries
    sub = train.subset(keep)
    assert torch.equal(_everything(sub), full[keep]) and torch.equal(sub.labels, train.labels[keep])
    part = sub._parts[0]
    assert isinstance(part, PackedPart) and all(isinstance(s, np.memmap) for s in part.shards)

    blob = pickle.dumps(part)  # file names travel, not pixels
    assert len(blob) < full[0].numel() * 5
    assert torch.equal(pickle.loads(blob).load(torch.arange(5), 3), full[keep])

    small = build_pool([str(out)], image_size=6, channels=1).splits["train"]  # resized per batch
    assert torch.equal(_everything(small), resize_images(full.permute(0, 2, 3, 1), 1, 6))


def test_grey_pack_is_repeated_for_colour_pool(tree, tmp_path):
    out = tmp_path / "grey"
    pack_folder(str(tree), out, 8, channels=1)
    grey = _everything(build_pool([str(out)]).splits["val"])
    assert grey.shape == (6, 1, 8, 8)
    colour = _everything(build_pool([str(out)], channels=3).splits["val"])
    assert torch.equal(colour, grey.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("workers", [0, 2])
def test_failure_leaves_nothing(tree, tmp_path, workers):
    bad = tree / "train" / "MR" / "zz.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match=f"cannot decode image {bad}") as exc:
        pack_folder(str(tree), tmp_path / "packed", 12, shard_size=5, num_workers=workers)
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["radimg"]


def test_existing_out_is_refused(tree, tmp_path):
    out = tmp_path / "packed"
    pack_folder(str(tree), out, 12)
    with pytest.raises(UserError, match=f"--out {out}: already holds a pack"):
        pack_folder(str(tree), out, 12)
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="already exists"):
        pack_folder(str(tree), tmp_path / "other", 12)
    with pytest.raises(UserError, match="--shard-size 0"):
        pack_folder(str(tree), tmp_path / "new", 12, shard_size=0)
    with pytest.raises(UserError, match="not an image folder"):
        pack_folder(str(tmp_path / "nowhere"), tmp_path / "new", 12)


def _broken(out, what):
    if what == "corrupt meta":
        (out / "meta.json").write_text("{not json")
        return out / "meta.json"
    if what == "missing meta":
        (out / "meta.json").unlink()
        return out / "meta.json"
    if what == "missing shard":
        (out / "train-00001.npy").unlink()
        return out / "train-00001.npy"
    data = (out / "val-00000.npy").read_bytes()  # truncated shard
    (out / "val-00000.npy").write_bytes(data[: len(data) // 2])
    return out / "val-00000.npy"


@pytest.mark.parametrize("what", ["corrupt meta", "missing meta", "missing shard", "truncated shard"])
def test_broken_pack(tree, tmp_path, what):
    out = tmp_path / "packed"
    pack_folder(str(tree), out, 12, shard_size=5)
    path = _broken(out, what)
    with pytest.raises(UserError) as exc:
        build_pool([str(out)])
    msg = str(exc.value)
    assert msg.startswith(f"--data {out}: ") and str(path) in msg and "\n" not in msg
