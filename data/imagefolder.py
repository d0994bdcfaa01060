"""A folder of class subfolders (root/<class>/<image>), split into train/val/test by seed."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Subset
from torchvision import datasets, transforms

from data.splits import DatasetError, Splits, split_indices
from data.transforms import eval_transform, to_tensor


def imagefolder(
    root: str,
    image_size: int,
    in_channels: int,
    num_classes: int,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    mean: list[float],
    std: list[float],
) -> Splits:
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetError(f"imagefolder: {root} does not exist or is not a directory (data.dataset.root).")
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(image_size, scale=(0.6, 1.0)), transforms.RandomHorizontalFlip()]
        + to_tensor(in_channels, mean, std)
    )
    eval_tf = eval_transform(image_size, in_channels, mean, std)
    try:
        train_full = datasets.ImageFolder(root, transform=train_tf)
    except FileNotFoundError as err:  # no class folders, or no images in them
        raise DatasetError(f"imagefolder: {root} holds no images in class subfolders ({err}).") from None
    if len(train_full.classes) != num_classes:
        raise DatasetError(
            f"imagefolder: {root} has {len(train_full.classes)} class folders but data.num_classes="
            f"{num_classes}; set data.num_classes={len(train_full.classes)}."
        )
    eval_full = datasets.ImageFolder(root, transform=eval_tf)
    val_idx, test_idx, train_idx = split_indices(len(train_full), [val_fraction, test_fraction], split_seed)
    return Splits(
        Subset(train_full, train_idx.tolist()),
        Subset(eval_full, val_idx.tolist()),
        Subset(eval_full, test_idx.tolist()),
        found={"class_names": train_full.classes},  # the folders' names, for predict.py's rows
    )


def write_example(directory, classes: int = 2, per_class: int = 60, size: int = 20) -> list[str]:
    """Small PNGs of random pixels in class folders (root/class_<i>/<j>.png), in the layout this dataset
    reads; returns the config overrides that point data=imagefolder at them (the tests train on it). As
    many as make three batches of 32 for training (debug=smoke's three steps, in one epoch)."""
    import numpy as np
    from PIL import Image

    root = Path(directory)
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return [f"data.dataset.root='{root}'", f"data.num_classes={classes}", "data.image_size=16"]
