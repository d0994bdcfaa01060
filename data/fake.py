"""torchvision FakeData: random images decoded per sample, like a file dataset. For speed tests."""

from __future__ import annotations

from torchvision import datasets, transforms

from data.splits import Splits


def fake(
    train_size: int, val_size: int, test_size: int, image_size: int, in_channels: int, num_classes: int
) -> Splits:
    def make(size: int, offset: int):
        return datasets.FakeData(
            size=size,
            image_size=(in_channels, image_size, image_size),
            num_classes=num_classes,
            transform=transforms.ToTensor(),
            random_offset=offset,
        )

    return Splits(make(train_size, 0), make(val_size, train_size), make(test_size, train_size + val_size))
