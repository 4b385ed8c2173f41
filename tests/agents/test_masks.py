"""Mask rendering: geometry scaling, separable blur, upsampling, application."""

import pytest
import torch
import torch.nn.functional as F

from rlmask.errors import UserError
from rlmask.masks import apply_mask, gaussian_blur, gaussian_kernel1d, render_mask, scaled_mask_geometry


@pytest.mark.parametrize("kernel,sigma,channels", [(3, 0.8, 1), (5, 1.5, 2), (13, 6.0, 1)])
def test_separable_blur_equals_direct_2d_convolution(kernel, sigma, channels):
    g = torch.Generator().manual_seed(kernel)
    img = torch.rand(2, channels, 17, 15, generator=g)  # (B, C, H, W), non-square on purpose
    w = gaussian_kernel1d(kernel, sigma)
    w2d = torch.outer(w, w).expand(channels, 1, kernel, kernel)
    pad = kernel // 2
    direct = F.conv2d(F.pad(img, (pad, pad, pad, pad), mode="reflect"), w2d, groups=channels)
    torch.testing.assert_close(gaussian_blur(img, kernel, sigma), direct, rtol=1e-5, atol=1e-6)


def test_kernel1d_is_normalised_symmetric_and_peaked():
    w = gaussian_kernel1d(7, 1.3)
    assert w.shape == (7,)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(w, w.flip(0))
    assert w.argmax() == 3


def test_geometry_reference_and_scaled_sizes():
    assert scaled_mask_geometry(224) == {"grid": 64, "kernel": 13, "sigma": 6.0}
    # 32 px: grid 64*32/224 = 9.14 -> 9; kernel 13*32/224 = 1.86 -> nearest odd 1 -> at least 3
    assert scaled_mask_geometry(32) == {"grid": 9, "kernel": 3, "sigma": pytest.approx(6 * 32 / 224)}
    # 28 px: grid exactly 8; kernel 1.63 -> 1 -> 3
    assert scaled_mask_geometry(28) == {"grid": 8, "kernel": 3, "sigma": pytest.approx(6 * 28 / 224)}
    # 64 px: grid 18.3 -> 18; kernel 3.71 -> nearest odd 3 (5 is 1.29 away)
    assert scaled_mask_geometry(64) == {"grid": 18, "kernel": 3, "sigma": pytest.approx(6 * 64 / 224)}
    # 448 px: everything doubles (kernel 26 is equidistant from 25 and 27: rounds up)
    assert scaled_mask_geometry(448) == {"grid": 128, "kernel": 27, "sigma": 12.0}
    assert scaled_mask_geometry(8)["grid"] == 4  # floor of the grid


def test_geometry_overrides_and_bad_values():
    assert scaled_mask_geometry(32, grid=64, kernel=13, sigma=6) == {"grid": 64, "kernel": 13, "sigma": 6.0}
    assert scaled_mask_geometry(32, kernel=1)["kernel"] == 1
    for bad in (dict(kernel=4), dict(kernel=0), dict(kernel=65), dict(grid=0), dict(sigma=0.0)):
        with pytest.raises(UserError):
            scaled_mask_geometry(32, **bad)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize(
    "grid,size,kernel,sigma", [(18, (64, 64), 3, 1.7), (5, (16, 23), 5, 2.0), (8, (28, 28), 1, 1.0)]
)
def test_render_equals_upsampling_then_blurring_the_image(upsample, grid, size, kernel, sigma):
    cells = torch.rand(3, grid * grid, generator=torch.Generator().manual_seed(grid))
    options = {"align_corners": False} if upsample == "bilinear" else {}
    image = F.interpolate(cells.view(3, 1, grid, grid), size=size, mode=upsample, **options)  # (3, 1, H, W)
    expected = gaussian_blur(image, kernel, sigma)
    mask = render_mask(cells, size, kernel=kernel, sigma=sigma, upsample=upsample)
    torch.testing.assert_close(mask, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_constant_grid_renders_constant_mask(upsample):
    cells = torch.full((3, 5 * 5), 0.37)
    mask = render_mask(cells, 16, kernel=5, sigma=2.0, upsample=upsample)
    torch.testing.assert_close(mask, torch.full((3, 1, 16, 16), 0.37))


def test_shape_device_dtype_and_grid_layouts():
    g = torch.Generator().manual_seed(0)
    cells = torch.rand(2, 4 * 4, generator=g)
    flat = render_mask(cells, (12, 20), kernel=3, sigma=1.0)
    square = render_mask(cells.view(2, 4, 4), (12, 20), kernel=3, sigma=1.0)
    assert flat.shape == (2, 1, 12, 20)
    assert flat.device == cells.device and flat.dtype == cells.dtype
    torch.testing.assert_close(flat, square)
    assert flat.min() >= 0 and flat.max() <= 1  # a convex combination of values in [0, 1]
    with pytest.raises(ValueError):
        render_mask(torch.rand(2, 15, generator=g), 12, kernel=3, sigma=1.0)
    with pytest.raises(UserError):
        render_mask(cells, 12, kernel=3, sigma=1.0, upsample="bicubic")


def test_nearest_without_blur_is_square_cells():
    cells = torch.arange(4.0).view(1, 4) / 4  # (1, 2*2)
    mask = render_mask(cells, 6, kernel=1, sigma=1.0)  # kernel 1: no blur
    expected = cells.view(2, 2).repeat_interleave(3, 0).repeat_interleave(3, 1)
    torch.testing.assert_close(mask[0, 0], expected)


def test_bilinear_is_smoother_than_nearest():
    g = torch.Generator().manual_seed(1)
    cells = torch.rand(1, 6 * 6, generator=g)

    def max_step(m):  # largest jump between horizontal or vertical neighbours
        return max(m.diff(dim=-1).abs().max(), m.diff(dim=-2).abs().max())

    nearest = render_mask(cells, 24, kernel=1, sigma=1.0, upsample="nearest")
    bilinear = render_mask(cells, 24, kernel=1, sigma=1.0, upsample="bilinear")
    assert max_step(bilinear) < 0.5 * max_step(nearest)
    assert bilinear.min() >= cells.min() - 1e-6 and bilinear.max() <= cells.max() + 1e-6


def test_render_is_differentiable_and_apply_broadcasts_over_channels():
    cells = torch.rand(2, 9, generator=torch.Generator().manual_seed(2), requires_grad=True)
    mask = render_mask(cells, 12, kernel=3, sigma=1.0)
    mask.sum().backward()
    assert cells.grad is not None and (cells.grad > 0).all()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    out = apply_mask(x, mask.detach())
    for c in range(3):
        torch.testing.assert_close(out[:, c], x[:, c] * mask[:, 0].detach())
