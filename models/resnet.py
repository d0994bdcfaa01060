"""torchvision's ResNet-18, adapted to the dataset's channels, classes and image size."""

from __future__ import annotations

from torch import nn
from torchvision import models

# Below this size the ImageNet stem (7x7 stride 2, then max-pool) throws away most of the image.
SMALL_IMAGE = 64


def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    model = models.resnet18(weights=None, num_classes=num_classes)
    if image_size < SMALL_IMAGE:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # Its four stages: FSDP's units, activation checkpointing's (setup/sharding.py). A function on the
    # instance, as torchvision's class has no such method.
    model.shard_blocks = lambda: [model.layer1, model.layer2, model.layer3, model.layer4]
    return model
