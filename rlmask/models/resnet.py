"""ResNets in plain PyTorch whose parameter names and shapes equal timm's.

One general class, ``ResNet``, is configured by arguments (block type, blocks per stage, stem,
shortcut style) and the named variants below are one-liners, as in timm's ``resnet.py``. The ugly
names (``conv1`` for a whole stem, ``maxpool``, ``layer1..4``, ``downsample.{0,1,2}``) are kept on
purpose: they make a timm checkpoint load here with ``strict=True`` and ours load into timm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes a 1x1 output on the CPU as one matrix product.

    A ResNet fed small images (a PGNM policy at ``--policy-input-size 32``, say) ends in 2x2 and 1x1
    feature maps. There, oneDNN's convolution kernels (the backward most of all) run several times
    slower than the equivalent GEMM: a 512->512 3x3 convolution on a 1x1 map, forward plus backward,
    took 9.7 ms against 2.5 ms as a product (batch 64, bf16, 2 cores). When the output is 1x1, only
    the taps that overlap the input contribute (the rest multiply zero padding), so the output is
    ``x[..., :r, :c] . w[..., p:p+r, q:q+c]`` summed over channels and taps: the same sum, and the
    same gradients (zero for the taps that see only padding). Other shapes and devices use the
    library convolution. Parameter names are ``nn.Conv2d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dim() != 4
            or isinstance(self.padding, str)
            or self.groups != 1
            or self.dilation != (1, 1)
            or self.padding_mode != "zeros"
        ):
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h, w = x.shape[-2:]
        if (h + 2 * ph - kh) // sh != 0 or (w + 2 * pw - kw) // sw != 0 or kh <= ph or kw <= pw:
            return super().forward(x)  # more than one output position (or none, which errors there)
        rows, cols = min(h, kh - ph), min(w, kw - pw)  # input extent under the kernel at output (0, 0)
        taps = [(ph + r) * kw + pw + c for r in range(rows) for c in range(cols)]  # their kernel positions
        # Products in the weight's own memory order: the weight gradient then comes back in the
        # parameter's layout, with no transposing copy of the whole kernel each step.
        if self.weight.is_contiguous() or not self.weight.is_contiguous(memory_format=torch.channels_last):
            weight = self.weight.reshape(self.out_channels, self.in_channels, kh * kw)  # (Cout, Cin, kh*kw)
            tap_dim, inputs = 2, x[..., :rows, :cols]  # (B, Cin, rows, cols)
        else:
            weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, kh * kw, self.in_channels)
            tap_dim, inputs = 1, x[..., :rows, :cols].permute(0, 2, 3, 1)  # (B, rows, cols, Cin)
        if len(taps) < kh * kw:
            weight = weight.index_select(tap_dim, torch.tensor(taps, device=weight.device))
        inputs = inputs.reshape(x.shape[0], -1)  # (B, Cin*rows*cols), in the weight's order
        weight = weight.reshape(self.out_channels, -1)
        return F.linear(inputs, weight, self.bias).view(x.shape[0], self.out_channels, 1, 1)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (resnet10t/18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Start the residual branch at zero so every block begins as the identity (timm's default)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, C, H/s, W/s)
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, "ResNet v1.5"), 1x1 expand by 4 (resnet26/50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Start the residual branch at zero so every block begins as the identity (timm's default)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, 4*planes, H/s, W/s)
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


def _downsample(inplanes: int, outplanes: int, stride: int, avg_down: bool) -> nn.Sequential:
    """Projection shortcut: ``{0 conv1x1, 1 bn}``, or with ``avg_down`` ``{0 pool, 1 conv1x1, 2 bn}``.

    Average-pooling before a stride-1 projection (ResNet-D) keeps all input pixels in the shortcut,
    where a strided 1x1 conv would drop three quarters of them.
    """
    if not avg_down:
        return nn.Sequential(Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes))
    pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
    return nn.Sequential(pool, Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))


class Classifier(nn.Module):
    """timm's classifier interface over a subclass's ``forward_features`` and ``forward_head`` and its
    ``fc`` layer of ``num_features`` inputs: ``forward``, ``get_classifier``, ``reset_classifier``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> logits (B, num_classes), or features (B, num_features) if num_classes=0."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classifier layer ``fc`` (an Identity when num_classes=0)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a fresh layer with ``num_classes`` outputs (0: Identity), on the model's device."""
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )


class ResNet(Classifier):
    """A ResNet with timm's module names, configured by arguments.

    block: ``BasicBlock`` or ``Bottleneck``; layers: blocks per stage (4 stages of 64/128/256/512 planes).
    stem_type: ``""`` one 7x7 stride-2 conv of 64 channels; ``"deep"`` three 3x3 convs
    (stem_width, stem_width, 2*stem_width); ``"deep_tiered"`` three 3x3 convs (3/4*stem_width,
    stem_width, 2*stem_width), the resnet10t stem. avg_down: average-pool projection shortcuts.
    small_stem: for 28-64 px images, the stem keeps full resolution (first conv stride 1, the 7x7
    conv becomes 3x3) and ``maxpool`` is an Identity, so the network downsamples 8x instead of 32x.
    num_classes=0 makes ``fc`` an Identity: ``forward`` then returns the pooled ``num_features``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_type: str = "",
        stem_width: int = 64,
        avg_down: bool = False,
        small_stem: bool = False,
        zero_init_last: bool = True,
    ):
        super().__init__()
        stride = 1 if small_stem else 2
        if stem_type in ("deep", "deep_tiered"):
            inplanes = 2 * stem_width
            c0 = 3 * (stem_width // 4) if stem_type == "deep_tiered" else stem_width
            # Indices 0..6 are timm's Sequential positions; 2 and 5 are the parameter-free ReLUs.
            self.conv1 = nn.Sequential(
                Conv2d(in_chans, c0, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c0),
                nn.ReLU(inplace=True),
                Conv2d(c0, stem_width, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                Conv2d(stem_width, inplanes, 3, padding=1, bias=False),
            )
        elif stem_type == "":
            inplanes = 64
            k = 3 if small_stem else 7
            self.conv1 = Conv2d(in_chans, inplanes, k, stride=stride, padding=k // 2, bias=False)
        else:
            raise ValueError(f"stem_type {stem_type!r}: expected '', 'deep' or 'deep_tiered'")
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            outplanes = planes * block.expansion
            down = None
            if stride != 1 or inplanes != outplanes:
                down = _downsample(inplanes, outplanes, stride, avg_down)
            blocks = [block(inplanes, planes, stride, down)]
            blocks += [block(outplanes, planes) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = outplanes

        self.num_features = inplanes
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_classes = num_classes
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # timm's init: He-normal (fan_out) convs; BN and fc keep PyTorch defaults; optionally zero
        # the last BN gamma of every residual branch.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, h, w) with h = H/32 (H/8 with ``small_stem``)."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> global average pool (B, C), then ``fc`` -> (B, num_classes) unless pre_logits."""
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)


def resnet10t(num_classes: int, in_chans: int = 3, small_stem: bool = False) -> ResNet:
    """ResNet-10-T: BasicBlock [1,1,1,1], tiered 3x3 stem 24-32-64, average-pool shortcuts."""
    return ResNet(
        BasicBlock,
        (1, 1, 1, 1),
        num_classes,
        in_chans,
        stem_type="deep_tiered",
        stem_width=32,
        avg_down=True,
        small_stem=small_stem,
    )


def resnet18(num_classes: int, in_chans: int = 3, small_stem: bool = False) -> ResNet:
    """ResNet-18: BasicBlock [2,2,2,2], 7x7 stem."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, small_stem=small_stem)


def resnet26(num_classes: int, in_chans: int = 3, small_stem: bool = False) -> ResNet:
    """ResNet-26: Bottleneck [2,2,2,2], 7x7 stem."""
    return ResNet(Bottleneck, (2, 2, 2, 2), num_classes, in_chans, small_stem=small_stem)


def resnet34(num_classes: int, in_chans: int = 3, small_stem: bool = False) -> ResNet:
    """ResNet-34: BasicBlock [3,4,6,3], 7x7 stem."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, small_stem=small_stem)


def resnet50(num_classes: int, in_chans: int = 3, small_stem: bool = False) -> ResNet:
    """ResNet-50: Bottleneck [3,4,6,3], 7x7 stem."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, small_stem=small_stem)
