"""A small U-Net (Ronneberger et al., 2015): per-pixel class scores [B, num_classes, H, W] for images
[B, C, H, W]. Inputs whose sides are not multiples of 2^depth are zero-padded, and the output cropped back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by batch norm and ReLU: one U-Net stage."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 3) -> None:
        """`width` channels at full resolution, doubled at each of `depth` halvings."""
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.stem = double_conv(in_channels, widths[0])
        self.down = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)
        )
        self.merge = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in range(depth))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.multiple = 2**depth

    def shard_blocks(self) -> list[nn.Module]:
        """Each level's convolutions: FSDP's units, activation checkpointing's (setup/sharding.py)."""
        return [*self.down, *self.merge]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)[..., :height, :width]
