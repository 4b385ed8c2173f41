"""The built-in synthetic multi-modal, multi-organ source."""

import pytest
import torch

from rlmask.data import build_pool
from rlmask.data.synthetic import MODALITIES, ORGANS, synthesize
from rlmask.errors import UserError


def test_defaults():
    pool = build_pool(["synthetic"])
    assert pool.sources == ["synthetic"] and (pool.channels, pool.image_size) == (1, 32)
    assert pool.classes == [f"synthetic/{m}/{o}" for m in MODALITIES[:3] for o in ORGANS[:4]]
    info = pool.info()["splits"]
    assert info["train"]["count"] == 12 * 64 and info["val"]["count"] == 12 * 16 and info["test"]["count"] == 12 * 16
    assert set(info["train"]["per_class"].values()) == {64}


def test_options_and_minimum_eval_size():
    pool = build_pool(["synthetic:n=4,size=16,modalities=5,organs=6,seed=3"])
    assert len(pool.classes) == 30 and pool.image_size == 16
    assert len(pool.splits["train"]) == 30 * 4 and len(pool.splits["val"]) == 30 * 8  # at least 8 per class


def test_deterministic_per_seed():
    a, b, c = (build_pool([f"synthetic:n=8,seed={s}"]).splits["train"] for s in (1, 1, 2))
    idx = torch.arange(len(a))
    assert torch.equal(a.load(idx), b.load(idx))
    assert not torch.equal(a.load(idx), c.load(idx))


def test_splits_differ():
    pool = build_pool(["synthetic:n=32"])
    train, val = pool.splits["train"].load(torch.arange(8)), pool.splits["val"].load(torch.arange(8))
    assert not torch.equal(train, val)


def test_generates_a_thousand_images_in_one_batched_call():
    m = torch.arange(12).repeat_interleave(84)  # 1008 images, 32 px
    x = synthesize(m // 4, m % 4, 32, torch.Generator().manual_seed(0))
    assert x.shape == (1008, 32, 32) and x.dtype == torch.uint8


def _features(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) low-level statistics: median level and median pixel-to-pixel roughness (robust to the organ)."""
    x = x.float() / 255
    rough = (x[..., 1:] - x[..., :-1]).abs().flatten(1).median(1).values
    return torch.stack([x.flatten(1).median(1).values, rough], 1)


def test_modalities_differ_in_low_level_statistics():
    pool = build_pool(["synthetic:n=48,modalities=5,organs=6"])
    train, test = pool.splits["train"], pool.splits["test"]
    f_train = _features(train.load(torch.arange(len(train)))[:, 0])
    f_test = _features(test.load(torch.arange(len(test)))[:, 0])
    mod_train, mod_test = train.labels // 6, test.labels // 6
    centroids = torch.stack([f_train[mod_train == m].mean(0) for m in range(5)])  # (5, 2)
    scale = f_train.std(0)
    pred = torch.cdist(f_test / scale, centroids / scale).argmin(1)
    assert (pred == mod_test).float().mean() > 0.95


def test_organs_differ_in_shape():
    pool = build_pool(["synthetic:n=64,modalities=1,organs=6"])  # ct: bright organ on a dark background
    s = pool.splits["train"]
    area = (s.load(torch.arange(len(s)))[:, 0] > 100).float().mean((-2, -1))  # (N,) organ area fraction
    per_organ = torch.stack([area[s.labels == o].mean() for o in range(6)])
    disc, ring, bar = per_organ[0], per_organ[1], per_organ[2]
    assert disc > ring > 0 and disc > bar > 0


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("synthetic:colour=1", "bad option 'colour=1'"),
        ("synthetic:n", "bad option 'n'"),
        ("synthetic:n=many", "n=many is not an integer"),
        ("synthetic:modalities=9", "modalities=9 is out of range"),
        ("synthetic:size=2", "size=2 is out of range"),
    ],
)
def test_bad_options(spec, msg):
    with pytest.raises(UserError, match="^--data " + spec + ": " + msg):
        build_pool([spec])
