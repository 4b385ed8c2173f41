"""The agents' U-Nets (a small configurable one, and one on a VGG-11 encoder, APGA's reference network),
Intelligent Masking's encoder as a backbone, and the reconstruct task's reconstructor; all plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmask.models.resnet import Classifier


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


# ---------------------------------------------------------------------------------------------
# Intelligent Masking's encoder as a backbone, and the reconstructor built on any backbone
# ---------------------------------------------------------------------------------------------
CONTEXT_CHANNELS = (16, 32, 64, 64, 128, 128)


class ContextEncoder(Classifier):
    """The small encoder of the Intelligent Masking reference as a classifier backbone.

    Six double-conv blocks of ``channels`` widths with a 2x2 max-pool between them (a level already at
    1 pixel is not pooled further), then a depthwise ``context_kernel`` x ``context_kernel`` convolution of
    the bottleneck, which the reference puts after its encoder to mix each channel over its neighbourhood.
    The interface is the ResNets': ``forward_features`` -> (B, num_features, h, w), ``forward_head``
    (global average pool, then ``fc`` unless ``pre_logits``), ``get_classifier``, ``reset_classifier``;
    ``forward_stages`` gives every block's output, the skips of a U-Net decoder.
    """

    def __init__(
        self,
        num_classes: int = 0,
        in_chans: int = 1,
        channels: tuple[int, ...] = CONTEXT_CHANNELS,
        context_kernel: int = 5,
    ):
        super().__init__()
        widths = (in_chans, *channels)
        self.blocks = nn.ModuleList(_double_conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.context = nn.Conv2d(
            channels[-1], channels[-1], context_kernel, padding=context_kernel // 2, groups=channels[-1]
        )
        self.stage_channels = tuple(channels)
        self.num_features = channels[-1]
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> every block's output, full resolution first; the last after ``context``."""
        feats = []
        for i, block in enumerate(self.blocks):
            if i > 0 and min(x.shape[-2:]) >= 2:
                x = F.max_pool2d(x, 2)
            x = block(x)
            feats.append(x)
        feats[-1] = self.context(feats[-1])
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) (floored; at least 1x1)."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> global average pool (B, C), then ``fc`` -> (B, num_classes) unless pre_logits."""
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)


def context_encoder(num_classes: int, in_chans: int = 3, small_stem: bool = False) -> ContextEncoder:
    """Intelligent Masking's encoder (16-32-64-64-128-128, max-pool between blocks, depthwise 5x5);
    ``small_stem`` does not apply (it has no stem)."""
    return ContextEncoder(num_classes, in_chans)


def encoder_stages(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The multi-scale features of a backbone, highest resolution first: ``forward_stages`` where the
    backbone has it; for rlmask's ResNets the stem output (before its max-pool) and the four stages."""
    if hasattr(encoder, "forward_stages"):
        return encoder.forward_stages(x)
    if all(hasattr(encoder, n) for n in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer4")):
        x = encoder.act1(encoder.bn1(encoder.conv1(x)))
        feats = [x]
        x = encoder.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(encoder, name)(x)
            feats.append(x)
        return feats
    raise ValueError(f"{type(encoder).__name__}: no multi-scale features for a U-Net decoder")


def stage_channels(encoder: nn.Module, in_chans: int) -> tuple[int, ...]:
    """Channel counts of ``encoder_stages`` (measured once on a tiny input, in eval mode)."""
    if hasattr(encoder, "stage_channels"):
        return tuple(encoder.stage_channels)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        feats = encoder_stages(encoder, torch.zeros(1, in_chans, 32, 32))
    encoder.train(was_training)
    return tuple(f.shape[1] for f in feats)


class Reconstructor(nn.Module):
    """A U-Net whose encoder is a registered backbone (``encoder``, a classifier without head), its decoder
    mirrored on the backbone's stages: upsample to each skip's size, concatenate, double conv; a last
    upsampling to the input's size where the backbone's first stage is strided (ResNets without small
    stem), then a 1x1 conv to ``out_chans``. The output is raw and has the input's spatial size.
    """

    def __init__(self, encoder: nn.Module, in_chans: int, out_chans: int | None = None):
        super().__init__()
        self.encoder = encoder
        chans = stage_channels(encoder, in_chans)
        self.decoder = nn.ModuleList(_double_conv(chans[i + 1] + chans[i], chans[i]) for i in range(len(chans) - 1))
        self.head = nn.Conv2d(chans[0], out_chans or in_chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, out_chans, H, W)."""
        feats = encoder_stages(self.encoder, x)
        y = feats[-1]
        for i in reversed(range(len(self.decoder))):
            skip = feats[i]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = self.decoder[i](torch.cat([y, skip], dim=1))  # (B, chans[i], h_i, w_i)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(y)
