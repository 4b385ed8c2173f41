"""Batched augmentation: crop + flip on the batch's device, normalisation, determinism."""

import pytest
import torch
import torch.nn.functional as F

import rlmask.data.augment as augment
from rlmask.data import DEFAULT_MEAN, DEFAULT_STD, Augment


@pytest.fixture
def batch():
    return torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_eval_is_scale_and_normalise(batch):
    out = Augment(16, train=False)(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert torch.allclose(out, (batch.float() / 255 - DEFAULT_MEAN) / DEFAULT_STD)


def test_train_output_shape_and_range(batch):
    out = Augment(12, train=True)(batch, _gen())
    assert out.shape == (6, 3, 12, 12) and out.dtype == torch.float32
    pixels = out * DEFAULT_STD + DEFAULT_MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_deterministic_for_a_generator_state(batch):
    aug = Augment(16, train=True)
    assert torch.equal(aug(batch, _gen(1)), aug(batch, _gen(1)))
    assert not torch.equal(aug(batch, _gen(1)), aug(batch, _gen(2)))
    g = _gen(1)
    first = aug(batch, g)
    assert not torch.equal(first, aug(batch, g))  # the generator advances


def test_full_crop_without_flip_is_identity(batch):
    aug = Augment(16, train=True, scale=(1, 1), ratio=(1, 1), hflip=0)
    assert torch.allclose(aug(batch, _gen()), Augment(16, train=False)(batch), atol=1e-5)


def test_flip(batch):
    aug = Augment(16, train=True, scale=(1, 1), ratio=(1, 1), hflip=1)
    assert torch.allclose(aug(batch, _gen()), Augment(16, train=False)(batch).flip(-1), atol=1e-5)


def test_crop_parameters_follow_scale_and_ratio():
    aug = Augment(32, train=True, scale=(0.2, 0.5), ratio=(0.5, 2.0), hflip=0.5)
    theta = aug.sample(4000, _gen())  # (N, 2, 3)
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    area, ratio = w * h, w / h
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.5 + 1e-5
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5
    assert (theta[:, :, 2].abs() <= 1 - torch.stack([w, h], 1) + 1e-5).all()  # crop inside the image
    assert 0.45 < (theta[:, 0, 0] < 0).float().mean() < 0.55  # flip probability


def test_one_resampling_per_batch(batch, monkeypatch):
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(augment.F, "grid_sample", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    Augment(16, train=True)(batch, _gen())
    assert calls == [batch.shape]  # the whole batch at once, no per-image loop


def test_per_channel_normalisation_and_errors(batch):
    out = Augment(16, train=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 1.0))(batch)
    assert torch.allclose(out[:, 2], batch[:, 2].float() / 255 - 0.3)
    with pytest.raises(ValueError, match="channels"):
        Augment(16, train=False, mean=(0.1, 0.2))(batch)
    with pytest.raises(ValueError, match="Generator"):
        Augment(16, train=True)(batch, None)
    with pytest.raises(ValueError):
        Augment(16, train=True, scale=(0.5, 0.2))


@pytest.mark.cuda  # a GPU machine only (pytest -m cuda, benchmarks/gpu.sh); deselected elsewhere
def test_cuda_matches_cpu(batch):
    aug = Augment(12, train=True)
    on_gpu = aug(batch.cuda(), _gen(5))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), aug(batch, _gen(5)), atol=1e-4)  # same crops: sampled on the CPU
