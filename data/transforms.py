"""What an image file goes through before a model sees it, shared by data=imagefolder's val and test
splits and predict.py's image inputs (data/inputs.py), so that both prepare an image alike."""

from __future__ import annotations

from torchvision import transforms


def to_tensor(in_channels: int, mean: list[float], std: list[float]) -> list:
    """A PIL image to a normalized tensor of in_channels (grey or colour as the data is)."""
    grey = [transforms.Grayscale(in_channels)] if in_channels in (1, 3) else []
    return [*grey, transforms.ToTensor(), transforms.Normalize(mean, std)]


def eval_transform(image_size: int, in_channels: int, mean: list[float], std: list[float]):
    """An image resized and centre-cropped to image_size, then normalized: no augmentation."""
    resize = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    return transforms.Compose(resize + to_tensor(in_channels, mean, std))
