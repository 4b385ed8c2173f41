"""BatchLoader: order as a function of (seed, epoch), exact resume, rank partition, drop_last, workers."""

import numpy as np
import pytest
import torch

from rlmask.data import BatchLoader, build_pool


@pytest.fixture(scope="module")
def split():
    return build_pool(["synthetic:n=3,size=8,modalities=2,organs=2"]).splits["train"]  # 12 images


def _order(loader, epoch, start_batch=0):
    """Sample indices, recovered from labels and pixels, of every batch of one epoch."""
    batches = []
    for x, y in loader.epoch(epoch, start_batch):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[0] == y.shape[0]
        batches.append(x)
    return batches


def _indices(split, batches):
    everything = split.load(torch.arange(len(split))).flatten(1)  # images are distinct: pixels identify them
    return [int((everything == x.flatten()).all(1).nonzero()[0]) for b in batches for x in b]


def test_order_is_a_function_of_seed_and_epoch(split):
    make = lambda seed: BatchLoader(split, 5, shuffle=True, seed=seed, drop_last=False)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    first = _indices(split, _order(a, 0))
    assert sorted(first) == list(range(12))  # a permutation, last partial batch kept
    _order(a, 1)  # iterating another epoch first changes nothing
    assert _indices(split, _order(b, 0)) == first == a.indices(0).tolist()
    assert a.indices(1).tolist() != first and c.indices(0).tolist() != first


def test_labels_match_images(split):
    loader = BatchLoader(split, 4, shuffle=True, seed=3, drop_last=True)
    for (x, y), idx in zip(loader.epoch(2), loader.indices(2).split(4)):
        assert torch.equal(x, split.load(idx)) and torch.equal(y, split.labels[idx])


def test_start_batch_resumes_exactly_without_loading_skipped_batches(split, monkeypatch):
    loader = BatchLoader(split, 3, shuffle=True, seed=7, drop_last=False)
    full = _order(loader, 4)
    loaded = []
    original = type(split).load
    monkeypatch.setattr(type(split), "load", lambda self, index: loaded.append(len(index)) or original(self, index))
    resumed = _order(loader, 4, start_batch=2)
    assert len(loaded) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:])) and len(resumed) == 2
    assert list(loader.epoch(4, start_batch=len(loader))) == []


@pytest.mark.parametrize("world,drop_last", [(3, False), (5, False), (5, True)])
def test_ranks_partition_the_epoch(split, world, drop_last):
    loaders = [
        BatchLoader(split, 2, shuffle=True, seed=1, drop_last=drop_last, rank=r, world_size=world) for r in range(world)
    ]
    per_rank = [loader.indices(0) for loader in loaders]
    assert len({len(loader) for loader in loaders}) == 1  # every rank has the same number of batches
    assert len({len(i) for i in per_rank}) == 1
    together = torch.cat(per_rank)
    if drop_last:  # 12 // 5 = 2 per rank, distinct samples
        assert len(together) == 10 and len(set(together.tolist())) == 10
    else:  # padded by repeating, like DistributedSampler: everything is covered
        assert set(together.tolist()) == set(range(12)) and len(together) == -(-12 // world) * world


def test_drop_last_and_natural_order(split):
    loader = BatchLoader(split, 5, shuffle=False, seed=0, drop_last=False)
    assert len(loader) == 3 and [len(x) for x, _ in loader.epoch(0)] == [5, 5, 2]
    assert loader.indices(0).tolist() == list(range(12)) == loader.indices(9).tolist()
    dropping = BatchLoader(split, 5, shuffle=True, seed=0, drop_last=True)
    assert len(dropping) == 2 and [len(x) for x, _ in dropping.epoch(0)] == [5, 5]


def test_bad_arguments(split):
    with pytest.raises(ValueError):
        BatchLoader(split, 0, shuffle=True, seed=0, drop_last=True)
    with pytest.raises(ValueError):
        BatchLoader(split, 4, shuffle=True, seed=0, drop_last=True, rank=2, world_size=2)


def test_workers_decode_folders_in_the_same_order(tmp_path, image_writer):
    rng = np.random.default_rng(0)
    for split_name in ("train", "val"):
        for c in ("a", "b"):
            for i in range(5):
                pixels = rng.integers(0, 256, (10, 10), dtype=np.uint8)
                image_writer(tmp_path / "f" / split_name / c / f"{i}.png", pixels)
    pool = build_pool([str(tmp_path / "f"), "synthetic:n=1,size=10"], cache_dir=tmp_path / "cache")
    train = pool.splits["train"]  # 10 files + 12 in-memory images
    serial = list(BatchLoader(train, 4, shuffle=True, seed=2, drop_last=False).epoch(1))
    parallel = list(BatchLoader(train, 4, shuffle=True, seed=2, drop_last=False, num_workers=2).epoch(1))
    assert len(serial) == len(parallel) == 6
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)
