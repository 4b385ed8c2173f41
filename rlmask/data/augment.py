"""Batched augmentation on the batch's device: random resized crop + horizontal flip, then normalisation.

Crop parameters are sampled on the CPU from an explicit generator (reproducible whatever the device) and
applied to the whole batch at once as one affine resampling (``affine_grid`` + ``grid_sample``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Reference normalisation of the PGNM code, the same on every channel.
DEFAULT_MEAN = 0.3162
DEFAULT_STD = 0.3213
_TRIES = 10  # crop draws per image before falling back to the whole image (as torchvision does)


class Augment:
    """uint8 (B, C, S, S) -> normalised float32 (B, C, image_size, image_size).

    train=True: per-sample random resized crop (area fraction in ``scale``, aspect ratio in ``ratio``)
    and horizontal flip with probability ``hflip``; train=False: only scaling to [0, 1] and normalising.
    """

    def __init__(
        self,
        image_size: int,
        *,
        train: bool,
        scale=(0.35, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip: float = 0.5,
        mean: float | tuple = DEFAULT_MEAN,
        std: float | tuple = DEFAULT_STD,
    ):
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]) or not 0 <= hflip <= 1:
            raise ValueError(f"bad augmentation options: scale={scale}, ratio={ratio}, hflip={hflip}")
        self.image_size, self.train = image_size, train
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.mean, self.std = mean, std

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) affine maps from output to input coordinates (CPU), one crop+flip per image."""
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand((n, _TRIES), generator=generator)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + (hi - lo) * torch.rand((n, _TRIES), generator=generator))
        w, h = (area * r).sqrt(), (area / r).sqrt()  # (n, TRIES) crop sides as fractions of the image
        valid = (w <= 1) & (h <= 1)
        first = valid.to(torch.uint8).argmax(1, keepdim=True)  # first valid draw per image
        ok = valid.any(1)
        w = torch.where(ok, w.gather(1, first)[:, 0], torch.ones(n))
        h = torch.where(ok, h.gather(1, first)[:, 0], torch.ones(n))
        centre = (
            torch.rand((n, 2), generator=generator) * (1 - torch.stack([w, h], 1)) * 2 - 1 + torch.stack([w, h], 1)
        )  # (n, 2) crop centre in [-1, 1] coordinates, crop inside the image
        flip = torch.where(torch.rand(n, generator=generator) < self.hflip, -1.0, 1.0)
        zero = torch.zeros(n)
        return torch.stack([torch.stack([w * flip, zero, centre[:, 0]], 1), torch.stack([zero, h, centre[:, 1]], 1)], 1)

    def __call__(
        self, x_u8: torch.Tensor, generator: torch.Generator | None = None, theta: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Augment and normalise a uint8 batch (B, C, S, S) on its own device.

        Training crops come from ``theta`` (B, 2, 3) when given (maps drawn in advance with ``sample``,
        e.g. one per sample of an epoch, so that the crops do not depend on how batches are split
        across processes), else they are drawn from ``generator``.
        """
        b, c = x_u8.shape[:2]
        x = x_u8.float().div_(255)  # (B, C, S, S) in [0, 1]
        s = self.image_size
        if self.train:
            if theta is None:
                if generator is None:
                    raise ValueError("Augment(train=True) needs an explicit seeded torch.Generator or theta")
                theta = self.sample(b, generator)
            theta = theta.to(x.device)  # (B, 2, 3)
            grid = F.affine_grid(theta, [b, c, s, s], align_corners=False)  # (B, S, S, 2)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        elif x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        if mean.shape[1] not in (1, c) or std.shape[1] not in (1, c):
            raise ValueError(f"mean/std have {mean.shape[1]}/{std.shape[1]} values for {c} channels")
        return (x - mean) / std
