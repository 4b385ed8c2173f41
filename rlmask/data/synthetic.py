"""``--data synthetic[:key=value,...]``: a seeded, multi-modal, multi-organ pool needing no files.

Class ``<modality>/<organ>``. The organ is a shape (disc, ring, bar, cross, triangle, blob) at a random
position, scale, aspect and rotation; the modality sets the low-level statistics: background level,
contrast, gamma and the noise (white Gaussian for CT, Rician with a smooth bias field for MRI, smooth
low-frequency haze for X-ray, multiplicative speckle for ultrasound, mid-frequency stain texture for
pathology). A classifier therefore needs texture for the modality and shape for the organ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlmask.data.source import RawSplit, Source
from rlmask.errors import UserError
from rlmask.runtime import derive_seed

MODALITIES = ("ct", "mri", "xray", "us", "path")
ORGANS = ("disc", "ring", "bar", "cross", "triangle", "blob")
DEFAULTS = {"n": 64, "size": 32, "seed": 0, "modalities": 3, "organs": 4}
_LIMITS = {
    "n": (1, 1_000_000),
    "size": (8, 1024),
    "seed": (0, 2**63 - 1),
    "modalities": (1, len(MODALITIES)),
    "organs": (1, len(ORGANS)),
}
# (background, foreground, gamma) per modality; noise is in _render.
_LEVELS = {
    "ct": (0.15, 0.65, 1.0),
    "mri": (0.05, 0.75, 0.8),
    "xray": (0.7, 0.3, 1.6),
    "us": (0.25, 0.55, 1.0),
    "path": (0.85, 0.45, 1.2),
}
_EXTENT = 1.3  # organ templates span [-1.3, 1.3] in shape units (shapes reach radius 1)


def parse_synthetic(spec: str) -> dict[str, int]:
    """Options of ``synthetic[:key=value,...]`` with defaults filled in."""
    opts = dict(DEFAULTS)
    body = spec.partition(":")[2]
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in DEFAULTS or not eq:
            raise UserError(f"--data {spec}: bad option '{item}' (keys: {', '.join(DEFAULTS)}, as key=value)")
        try:
            opts[key] = int(value)
        except ValueError:
            raise UserError(f"--data {spec}: {key}={value} is not an integer") from None
        lo, hi = _LIMITS[key]
        if not lo <= opts[key] <= hi:
            raise UserError(f"--data {spec}: {key}={value} is out of range [{lo}, {hi}]")
    return opts


def open_synthetic(spec: str) -> Source:
    """The synthetic :class:`Source` for ``spec``; images are generated when the pool reads them."""
    o = parse_synthetic(spec)
    classes = [f"{m}/{g}" for m in MODALITIES[: o["modalities"]] for g in ORGANS[: o["organs"]]]
    counts = {"train": o["n"], "val": max(8, o["n"] // 4), "test": max(8, o["n"] // 4)}
    splits = {}
    for i, (split, n) in enumerate(counts.items()):
        labels = torch.arange(len(classes)).repeat_interleave(n)  # (N,) class-major
        seed = derive_seed(o["seed"], i)
        splits[split] = RawSplit(labels=labels, read=_reader(labels, o["organs"], o["size"], seed))
    return Source(name="synthetic", spec=spec, classes=classes, native_shape=(o["size"], o["size"], 1), splits=splits)


def _reader(labels: torch.Tensor, organs: int, size: int, seed: int):
    return lambda: synthesize(labels // organs, labels % organs, size, torch.Generator().manual_seed(seed))


def synthesize(
    modality: torch.Tensor, organ: torch.Tensor, size: int, generator: torch.Generator, chunk: int | None = None
) -> torch.Tensor:
    """uint8 (N, size, size) images for per-image modality and organ indices (N,), deterministic."""
    chunk = chunk or max(1, (1 << 22) // (size * size))  # bounds memory at large sizes
    out = torch.empty((len(modality), size, size), dtype=torch.uint8)
    for i in range(0, len(modality), chunk):
        out[i : i + chunk] = _render(modality[i : i + chunk], organ[i : i + chunk], size, generator)
    return out


def _templates(size: int) -> torch.Tensor:
    """(len(ORGANS), 1, T, T) soft organ masks on a 2x finer grid spanning [-_EXTENT, _EXTENT] shape units."""
    t = 2 * size
    lin = ((torch.arange(t) + 0.5) / t * 2 - 1) * _EXTENT
    v, u = torch.meshgrid(lin, lin, indexing="ij")  # (T, T)
    au, av, r = u.abs(), v.abs(), torch.hypot(u, v)
    # Signed distance (approximate, in shape units): negative inside.
    sdf = torch.stack(
        [
            r - 1,  # disc
            (r - 0.7).abs() - 0.3,  # ring
            torch.maximum(au - 1, av - 0.3),  # bar
            torch.minimum(torch.maximum(au - 1, av - 0.28), torch.maximum(au - 0.28, av - 1)),  # cross
            torch.maximum(au * 0.866 + v * 0.5, -v) - 0.55,  # triangle
            r - (0.75 + 0.25 * torch.cos(3 * torch.atan2(v, u))),  # blob (three lobes)
        ]
    )
    return torch.sigmoid(-sdf * t / (2 * _EXTENT)).unsqueeze(1)  # edge about one template pixel wide


def _render(modality: torch.Tensor, organ: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    n = len(modality)
    rand = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
    randn = lambda *shape: torch.randn(shape, generator=g)  # noqa: E731
    # Per-image pose: centre, radius (image units), aspect, rotation -> affine map image -> template.
    centre = (rand(n, 2) * 2 - 1) * 0.3
    scale = 0.35 + 0.25 * rand(n)
    aspect = 0.8 + 0.4 * rand(n)
    angle = rand(n) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = 1 / (_EXTENT * scale), 1 / (_EXTENT * scale * aspect)
    a = torch.stack([torch.stack([sx * cos, sx * sin], -1), torch.stack([-sy * sin, sy * cos], -1)], 1)  # (N, 2, 2)
    theta = torch.cat([a, -(a @ centre.unsqueeze(-1))], 2)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)  # (N, S, S, 2)
    templates = _templates(size)
    mask = torch.empty((n, size, size))
    for o in organ.unique().tolist():
        sel = (organ == o).nonzero()[:, 0]
        mask[sel] = F.grid_sample(
            templates[o : o + 1].expand(len(sel), -1, -1, -1),
            grid[sel],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[:, 0]

    def lowfreq(k: int, cells: int) -> torch.Tensor:  # (k, S, S) smooth noise, unit-ish amplitude
        return F.interpolate(randn(k, 1, cells, cells), size=(size, size), mode="bicubic", align_corners=False)[:, 0]

    img = torch.empty((n, size, size))
    for m, name in enumerate(MODALITIES):
        sel = (modality == m).nonzero()[:, 0]
        if len(sel) == 0:
            continue
        bg, fg, gamma = _LEVELS[name]
        k = len(sel)
        fg = fg + 0.06 * randn(k, 1, 1)  # per-image contrast jitter
        x = bg + (fg - bg) * mask[sel]
        noise = randn(k, size, size)
        if name == "ct":
            x = x + 0.08 * noise
        elif name == "mri":
            x = x * (1 + 0.25 * lowfreq(k, 3))
            x = torch.hypot(x + 0.025 * noise, 0.025 * randn(k, size, size))
        elif name == "xray":
            x = x + 0.12 * lowfreq(k, 4) + 0.01 * noise
        elif name == "us":
            x = x * torch.hypot(noise, randn(k, size, size)) / math.sqrt(2)
        else:  # path
            x = x + 0.12 * lowfreq(k, max(2, size // 4)) + 0.02 * noise
        img[sel] = x.clamp(0, 1) ** gamma if gamma != 1 else x.clamp(0, 1)
    return (img * 255).round_().to(torch.uint8)
