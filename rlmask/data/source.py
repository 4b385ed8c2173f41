"""What every data source hands the pool, and the one-shot resize of in-memory images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601 luma weights: the usual RGB -> grey conversion (also what PIL's convert("L") uses).
LUMA = (0.299, 0.587, 0.114)


@dataclass
class RawSplit:
    """One split of one source, before resizing.

    Either in memory (``read`` returns uint8 images (N, H, W) or (N, H, W, C), numpy or torch),
    folder-backed (``files``: one image path per sample, decoded when loaded) or packed (``shards``:
    memory-mapped uint8 (n_k, C, S, S) arrays whose rows are read when loaded).
    """

    labels: torch.Tensor  # (N,) int64, source-local class indices
    read: Callable[[], np.ndarray | torch.Tensor] | None = None
    files: list[str] | None = None
    shards: list[np.ndarray] | None = None


@dataclass
class Source:
    """A named source of labelled images with train/val[/test] splits."""

    name: str
    spec: str
    classes: list[str]
    native_shape: tuple[int, int, int]  # (H, W, C) with C in {1, 3}
    splits: dict[str, RawSplit] = field(default_factory=dict)
    # Plain data on how the source was read, for ``data info`` and the log: layout, the split made,
    # files excluded per pattern, masks seen, rows skipped, and one-line ``warnings``.
    details: dict = field(default_factory=dict)


def resize_images(
    images: np.ndarray | torch.Tensor, channels: int, size: int, chunk_bytes: int = 1 << 26
) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> uint8 (N, c, size, size), resized once for the whole split.

    RGB becomes grey by luminance when ``channels == 1``; grey stays one channel (the pool repeats it
    when a batch is loaded, which keeps a grey source three times smaller in memory). Resizing is
    bilinear with antialiasing, in chunks of about ``chunk_bytes`` of float32 so memory stays modest.
    """
    x = torch.as_tensor(images)
    x = x.unsqueeze(-1) if x.ndim == 3 else x  # (N, H, W, C)
    n, h, w, c = x.shape
    out_c = 1 if channels == 1 else c
    if (h, w) == (size, size) and out_c == c:
        return x.permute(0, 3, 1, 2).contiguous()  # no arithmetic: exact copy
    out = torch.empty((n, out_c, size, size), dtype=torch.uint8)
    step = max(1, chunk_bytes // (4 * c * max(h * w, size * size)))
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    for i in range(0, n, step):
        xb = x[i : i + step].permute(0, 3, 1, 2).float()  # (b, C, H, W)
        if out_c != c:
            xb = (xb * luma).sum(1, keepdim=True)  # (b, 1, H, W)
        if (h, w) != (size, size):
            xb = F.interpolate(xb, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + step] = xb.round_().clamp_(0, 255).to(torch.uint8)
    return out
