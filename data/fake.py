"""torchvision FakeData: random images decoded per sample, like a file dataset. For speed tests."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset
from torchvision import datasets, transforms

from data.splits import Splits


def fake(
    train_size: int,
    val_size: int,
    test_size: int,
    image_size: int,
    in_channels: int,
    num_classes: int,
    in_memory: bool = False,
) -> Splits:
    """in_memory=True decodes every image once, up front, into tensors: the loop then gets batches sliced
    by index, so a benchmark times the model and the loop, not image decoding."""

    def make(size: int, offset: int):
        dataset = datasets.FakeData(
            size=size,
            image_size=(in_channels, image_size, image_size),
            num_classes=num_classes,
            transform=transforms.ToTensor(),
            random_offset=offset,
        )
        if not in_memory:
            return dataset
        images, labels = zip(*dataset, strict=True)
        return TensorDataset(torch.stack(images), torch.tensor(labels))

    return Splits(make(train_size, 0), make(val_size, train_size), make(test_size, train_size + val_size))
