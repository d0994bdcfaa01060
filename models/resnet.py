"""torchvision's ResNet-18, adapted to the dataset's channels, classes and image size; or, with
`pretrained=True`, torchvision's ImageNet weights (`weights` names the ResNet18_Weights member) with their
ImageNet stem kept and a new `fc` for the classes."""

from __future__ import annotations

import difflib
import logging

from torch import nn
from torchvision import models

from models.pretrained import WeightsError, adapt_first_conv, torch_hub_state_dict, wanted

log = logging.getLogger(__name__)

# Below this size the ImageNet stem (7x7 stride 2, then max-pool) throws away most of the image.
SMALL_IMAGE = 64
# The new layers that a fine-tuning trains from scratch (optim/params.py reads this: docs/tasks.md).
HEAD = ("fc.",)


def resnet18(
    in_channels: int,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights: str = "IMAGENET1K_V1",
) -> nn.Module:
    if pretrained:
        return _pretrained(in_channels, num_classes, image_size, weights)
    model = models.resnet18(weights=None, num_classes=num_classes)
    if image_size < SMALL_IMAGE:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.head_prefixes = HEAD
    # Its four stages: FSDP's units, activation checkpointing's (setup/sharding.py). A function on the
    # instance, as torchvision's class has no such method.
    model.shard_blocks = lambda: [model.layer1, model.layer2, model.layer3, model.layer4]
    return model


def _pretrained(in_channels: int, num_classes: int, image_size: int, weights: str) -> nn.Module:
    """The ImageNet stem stays whatever the image size (its filters are what the weights learned); only a
    channel count other than RGB changes conv1, its filters adapted (models/pretrained.py)."""
    member = weights_member(weights)
    model = models.resnet18(weights=None)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if wanted(True):
        state = torch_hub_state_dict(member.url, f"model=resnet18 model.weights={weights}")
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_channels)
        model.load_state_dict(state)
        if in_channels != 3:
            log.info("Pretrained conv1: its RGB filters adapted to %d input channels", in_channels)
        if image_size < SMALL_IMAGE:
            log.info("Pretrained ResNet-18 at %d px: the ImageNet stem (stride 4) is kept", image_size)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.head_prefixes = HEAD
    return model


def weights_member(weights: str):
    names = list(models.ResNet18_Weights.__members__)
    if weights not in names:
        close = difflib.get_close_matches(str(weights), names, n=3, cutoff=0.3)
        raise WeightsError(
            f"model.weights={weights!r} is not a ResNet18_Weights member (did you mean "
            f"{' or '.join(close or names)}?)"
        )
    return models.ResNet18_Weights[weights]


def preprocessing(weights: str = "IMAGENET1K_V1", **_) -> dict:
    """What the weights were trained on: their mean, std and crop size (setup/pretrained.py reads it)."""
    transform = weights_member(weights).transforms()
    return {"mean": list(transform.mean), "std": list(transform.std), "image_size": transform.crop_size[0]}
