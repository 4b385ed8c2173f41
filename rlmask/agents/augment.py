"""Batch augmentations a user would pick instead of a masking agent, for every agent's ``--augment`` option.

The loop applies the agent's ``augment`` to each normalised training batch (after the crop and flip,
before ``agent.train_step``), so any agent can run on top of one; the presets ``trivialaugment``,
``randaugment``, ``mixup`` and ``cutmix`` are plain training with one.

- ``trivialaugment`` / ``randaugment`` (Müller & Hutter 2021; Cubuk et al. 2020): kornia's
  (``kornia.augmentation.auto``, the optional extra ``pip install 'rlmask[augment]'``), on [0, 1] images,
  grey ones as three equal channels averaged back. kornia draws one operation per call for the whole batch
  (magnitudes per image), so the batch is split into ``AUTO_GROUPS`` groups, each with its own operation.
  kornia samples from torch's global generator: each call runs under ``fork_rng`` seeded from the run's
  seed, the step and the rank, so it is reproducible and resumes exactly with nothing saved.
- ``mixup`` (Zhang et al. 2018): ``x = lam x_i + (1 - lam) x_j``, lam ~ Beta(0.2, 0.2) per batch, soft targets.
- ``cutmix`` (Yun et al. 2019): one box of x_j pasted into x_i, lam ~ Beta(1, 1), targets weighted by the
  box's true area. Both are written out: kornia's mix augmentations draw lam uniformly and (CutMix) warn
  that their lam is not the paper's.

Mixed targets are class probabilities (B, K) (the classify task's cross-entropy takes them); a batch
without mixing keeps its integer labels, so ``--augment none`` changes nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from rlmask import runtime
from rlmask.errors import UserError

AUGMENTS = ("none", "trivialaugment", "randaugment", "mixup", "cutmix")
AUTO_GROUPS = 8  # independent operation draws per batch for TrivialAugment / RandAugment
MIXUP_ALPHA, CUTMIX_ALPHA = 0.2, 1.0


def check_augment(name: str) -> None:
    if name not in AUGMENTS:
        raise UserError(f"--augment {name}: unknown augmentation; choose from {', '.join(AUGMENTS)}")
    if name in ("trivialaugment", "randaugment"):
        try:
            import kornia.augmentation.auto  # noqa: F401
        except ImportError:
            raise UserError(f"--augment {name}: needs kornia (pip install 'rlmask[augment]')") from None


def _auto(name: str, x01: torch.Tensor, seed: int) -> torch.Tensor:
    from kornia.augmentation.auto import RandAugment, TrivialAugment

    grey = x01.shape[1] == 1
    rgb = x01.expand(-1, 3, -1, -1) if grey else x01
    devices = [rgb.device] if rgb.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        policy = TrivialAugment() if name == "trivialaugment" else RandAugment(n=2, m=10)
        order = torch.randperm(rgb.shape[0], device=rgb.device)
        out = torch.empty_like(rgb)
        for group in order.chunk(min(AUTO_GROUPS, rgb.shape[0])):
            out[group] = policy(rgb[group]).to(rgb.dtype)
    return out.mean(1, keepdim=True) if grey else out


def _one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, num_classes).float() if y.dim() == 1 else y.float()


def augment_batch(
    name: str, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, seed: int, mean, std
) -> tuple[torch.Tensor, torch.Tensor]:
    """``name`` applied to the normalised batch x (B, C, H, W) with labels y (B,); returns (x, targets).

    ``seed``: this batch's seed (the loop's: from the run's seed, the step and the rank)."""
    if name == "none":
        return x, y
    if name in ("trivialaugment", "randaugment"):
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        return (_auto(name, (x * s + m).clamp(0, 1), seed) - m) / s, y
    g = torch.Generator().manual_seed(seed)
    alpha = MIXUP_ALPHA if name == "mixup" else CUTMIX_ALPHA
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    targets = _one_hot(y, num_classes)
    if name == "mixup":
        mixed = lam * x + (1 - lam) * x[perm]
    else:
        h, w = x.shape[-2:]
        cut = (1 - lam) ** 0.5
        bh, bw = int(round(h * cut)), int(round(w * cut))
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
        left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
        mixed = x.clone()
        mixed[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)  # the box's true area after clipping
    return mixed, lam * targets + (1 - lam) * targets[perm]


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw: numpy's sampler, seeded from ``generator`` (torch has no seeded Beta)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def batch_seed(seed: int, step: int) -> int:
    """The seed of one training batch's augmentation: from the run's seed, the step and this process's rank."""
    return runtime.derive_seed(runtime.rank_seed(seed), step, 0xA46)
