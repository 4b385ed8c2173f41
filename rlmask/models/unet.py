"""The agents' U-Nets: a small configurable U-Net (the occlusion (DQN) and segmentation (APGA) agents) and a
U-Net on a VGG-11 encoder (the APGA reference's segmentation network), both in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """(conv3x3 - BN - ReLU) x 2, keeping the spatial size."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: encoder blocks of ``channels`` widths with 2x2 max-pool between them, a mirrored decoder
    (bilinear upsampling to the skip's size, concatenation, double conv) and a 1x1 output conv.

    Any input size works: pooling floors odd sizes (300 -> 150 -> 75 -> 37 -> 18 -> 9 with the
    default six blocks, the 9x9 grid of the occlusion agent), a level already at 1 pixel is not pooled
    further (28 px), and the decoder upsamples to each skip's exact size. The output is raw
    (no activation) and has the input's spatial size.
    """

    def __init__(self, in_chans: int, out_chans: int, channels: tuple[int, ...] = (16, 32, 64, 64, 128, 128)):
        super().__init__()
        if len(channels) < 1:
            raise ValueError("channels: need at least one encoder width")
        self.channels = tuple(channels)
        widths = (in_chans, *channels)
        self.encoder = nn.ModuleList(_double_conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # decoder[i] merges the upsampled level i+1 with skip i and outputs channels[i].
        self.decoder = nn.ModuleList(
            _double_conv(channels[i + 1] + channels[i], channels[i]) for i in range(len(channels) - 1)
        )
        self.head = nn.Conv2d(channels[0], out_chans, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> encoder features, one per block; the last is the bottleneck
        (B, channels[-1], h, w)."""
        feats = []
        for i, block in enumerate(self.encoder):
            if i > 0 and min(x.shape[-2:]) >= 2:
                x = F.max_pool2d(x, 2)
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Encoder features (from ``encode``) -> (B, out_chans, H0, W0) at the first feature's size."""
        x = feats[-1]
        for i in reversed(range(len(self.decoder))):
            skip = feats[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder[i](torch.cat([x, skip], dim=1))  # (B, channels[i], h_i, w_i)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, out_chans, H, W)."""
        # The decoder upsamples to each skip's exact size, so the output already has the input's size.
        return self.decode(self.encode(x))


# VGG-11's convolution widths, grouped by resolution (configuration "A" of Simonyan & Zisserman):
# one conv at the first two levels, two at the last three, a 2x2 max-pool between levels.
VGG11_LEVELS = ((64,), (128,), (256, 256), (512, 512), (512, 512))


def _conv_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


class VGG11UNet(nn.Module):
    """U-Net whose encoder is VGG-11's convolutional part (no batch norm, as VGG-11 itself), as the APGA
    reference's segmentation network; the decoder upsamples bilinearly to each skip's size, concatenates it
    and applies two conv-ReLU layers of half the skip's width. Randomly initialised: torchvision (and so its
    ImageNet weights) is not used here.

    Like ``UNet`` any input size works: a level already at 1 pixel is not pooled further, and the output
    (raw, no activation) has the input's spatial size. ``width`` scales every convolution (1.0: VGG-11's).
    """

    def __init__(self, in_chans: int, out_chans: int, width: float = 1.0):
        super().__init__()
        levels = [tuple(max(1, round(c * width)) for c in level) for level in VGG11_LEVELS]
        self.widths = [level[-1] for level in levels]
        encoder, cin = [], in_chans
        for level in levels:
            layers = []
            for cout in level:
                layers += _conv_relu(cin, cout)
                cin = cout
            encoder.append(nn.Sequential(*layers))
        self.encoder = nn.ModuleList(encoder)
        # Centre: one more pooled level, as in VGG's last pool, before the decoder climbs back.
        self.center = nn.Sequential(*_conv_relu(cin, cin))
        decoder, below = [], cin
        for skip in reversed(self.widths):
            out = max(1, skip // 2)
            decoder.append(nn.Sequential(*_conv_relu(below + skip, out), *_conv_relu(out, out)))
            below = out
        self.decoder = nn.ModuleList(decoder)  # deepest level first
        self.head = nn.Conv2d(below, out_chans, 1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, out_chans, H, W)."""
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(self._pool(x) if i > 0 else x)
            skips.append(x)  # (B, widths[i], H / 2^i, W / 2^i)
        x = self.center(self._pool(x))
        for block, skip in zip(self.decoder, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
