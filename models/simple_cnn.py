"""Two conv blocks and a linear head. Global pooling makes it work at any image size from 4 px up."""

from __future__ import annotations

from torch import nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SimpleCNN(nn.Module):
    # Its classifier (optim/params.py): what fine-tuning's freeze_backbone_epochs and backbone_lr_scale
    # leave out of the backbone, e.g. on a contrastive encoder (conf/experiment/finetune_contrastive.yaml).
    head_prefixes = ("head.",)

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, width),
            conv_block(width, width),
            nn.MaxPool2d(2),
            conv_block(width, 2 * width),
            conv_block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def shard_blocks(self) -> list[nn.Module]:
        """The conv blocks: FSDP's units, activation checkpointing's (setup/sharding.py)."""
        return [m for m in self.features if isinstance(m, nn.Sequential)]

    def forward(self, x):
        return self.head(self.features(x))
