"""Mask rendering shared by the agents: grid of cells -> upsample -> Gaussian blur -> multiply the image.

A mask starts as one value per cell of a G x G grid, is upsampled to the image size and smoothed by a
separable Gaussian blur (reflect padding, as torchvision's ``gaussian_blur``), then multiplies every
channel. Both steps are linear and separable, so rendering is two small matrix products per mask.
Everything is batched, differentiable and stays on the cells' device.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from rlmask.errors import UserError

REFERENCE_SIZE = 224  # the side the published constants (grid 64, kernel 13, sigma 6) were tuned for


def _round_half_up(v: float) -> int:
    # Python's round() rounds ties to even; a geometry should not depend on that parity.
    return math.floor(v + 0.5)


def scaled_mask_geometry(
    image_size: int, grid: int | None = None, kernel: int | None = None, sigma: float | None = None
) -> dict:
    """Grid, blur kernel and sigma for images of side ``image_size``: the 224-px constants scaled with the side.

    Defaults: grid round(64*S/224) (at least 4), sigma 6*S/224, kernel the nearest odd integer to
    13*S/224 (at least 3). Explicit values override. At S=224: grid 64, kernel 13, sigma 6.0.
    """
    scale = image_size / REFERENCE_SIZE
    grid = max(4, _round_half_up(64 * scale)) if grid is None else int(grid)
    kernel = max(3, 2 * _round_half_up((13 * scale - 1) / 2) + 1) if kernel is None else int(kernel)
    sigma = 6.0 * scale if sigma is None else float(sigma)
    if grid < 1:
        raise UserError(f"grid={grid}: the mask grid needs at least 1 cell per side")
    if kernel < 1 or kernel % 2 == 0:
        raise UserError(f"kernel={kernel}: the blur kernel must be an odd integer >= 1")
    if kernel // 2 >= image_size:
        raise UserError(f"kernel={kernel}: too large for {image_size}-px images (at most {2 * image_size - 1})")
    if sigma <= 0:
        raise UserError(f"sigma={sigma}: the blur sigma must be positive")
    return {"grid": grid, "kernel": kernel, "sigma": sigma}


def gaussian_kernel1d(kernel: int, sigma: float, device=None, dtype=None) -> torch.Tensor:
    """Normalised 1-D Gaussian weights of odd length ``kernel``, centred: (kernel,)."""
    x = torch.arange(kernel, device=device, dtype=dtype or torch.float32) - (kernel - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def gaussian_blur(img: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding of kernel//2: two 1-D convolutions.

    Equal to one 2-D convolution with the outer-product kernel, at O(k) instead of O(k^2) per pixel.
    """
    c, pad = img.shape[1], kernel // 2
    w = gaussian_kernel1d(kernel, sigma, img.device, img.dtype)  # (k,)
    img = F.pad(img, (pad, pad, pad, pad), mode="reflect")  # (B, C, H+2p, W+2p)
    img = F.conv2d(img, w.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)  # blur along H
    return F.conv2d(img, w.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)  # blur along W


@functools.lru_cache(maxsize=64)
def _axis_operator(
    grid: int, size: int, kernel: int, sigma: float, upsample: str, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(size, grid) matrix of one axis of rendering: upsample ``grid`` values to ``size``, then blur.

    Upsampling and the reflect-padded blur are linear and act on each axis separately, so a whole
    mask is ``A_h @ cells @ A_w.T``: two small matrix products instead of an image-sized convolution.
    """
    if upsample not in ("nearest", "bilinear"):
        raise UserError(f"upsample={upsample!r}: choose 'nearest' or 'bilinear'")
    basis = torch.eye(grid, device=device, dtype=torch.float64).view(grid, 1, 1, grid)  # one-hot rows
    options = {"align_corners": False} if upsample == "bilinear" else {}
    rows = F.interpolate(basis, size=(1, size), mode=upsample, **options)  # (grid, 1, 1, size)
    pad = kernel // 2
    rows = F.pad(rows, (pad, pad, 0, 0), mode="reflect") if pad else rows
    rows = F.conv2d(rows, gaussian_kernel1d(kernel, sigma, device, torch.float64).view(1, 1, 1, kernel))
    return rows.view(grid, size).t().to(dtype).contiguous()  # (size, grid)


def render_mask(
    cells: torch.Tensor, image_size: int | tuple[int, int], *, kernel: int, sigma: float, upsample: str = "nearest"
) -> torch.Tensor:
    """Smooth mask (B, 1, H, W) from cell values (B, G*G) or (B, G, G) in [0, 1].

    The grid is upsampled to the image size (``"nearest"``: square cells as in the reference,
    ``"bilinear"``: ramps between cell centres), then blurred by :func:`gaussian_blur`; both steps
    run as two precomputed per-axis matrices (see :func:`_axis_operator`).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    b = cells.shape[0]
    g = math.isqrt(cells[0].numel())
    if g * g != cells[0].numel():
        raise ValueError(f"cells of shape {tuple(cells.shape)} do not form a square grid")
    a_h = _axis_operator(g, h, kernel, float(sigma), upsample, cells.device, cells.dtype)  # (H, G)
    a_w = _axis_operator(g, w, kernel, float(sigma), upsample, cells.device, cells.dtype)  # (W, G)
    return (a_h @ cells.reshape(b, g, g) @ a_w.t()).unsqueeze(1)  # (B, 1, H, W)


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) times mask (B or 1, 1, H, W), broadcast over channels."""
    return x * mask


def cell_index(size: int, grid: int, device=None) -> torch.Tensor:
    """(size,) the grid cell of each pixel along one axis: floor(p * grid / size), nearest upsampling's map."""
    return torch.arange(size, device=device) * grid // size


def block_mask(top_left: torch.Tensor, block: int, grid: int, size) -> torch.Tensor:
    """Hidden-region masks (B, 1, H, W), 1 on the ``block`` x ``block`` cells whose top-left cell is
    ``top_left`` (B, 2) (row, column) of a ``grid`` x ``grid`` partition of the image, 0 elsewhere."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    rows = cell_index(h, grid, top_left.device)  # (H,)
    cols = cell_index(w, grid, top_left.device)  # (W,)
    r, c = top_left[:, 0, None], top_left[:, 1, None]  # (B, 1)
    in_rows = (rows[None] >= r) & (rows[None] < r + block)  # (B, H)
    in_cols = (cols[None] >= c) & (cols[None] < c + block)  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1).float()
