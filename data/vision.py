"""torchvision's MNIST, FashionMNIST and CIFAR-10, downloaded into the cache directory on first use.

The validation split is carved from the official training split by seed; the official test split stays
the test split. Offline and absent, they fail with one line that names the dataset and the path.
"""

from __future__ import annotations

import os

from torch.utils.data import Subset
from torchvision import datasets, transforms

from data.splits import DatasetError, Splits, split_indices


def mnist(**kwargs) -> Splits:
    return _load(datasets.MNIST, "MNIST", augment=[], **kwargs)


def fashion_mnist(**kwargs) -> Splits:
    return _load(datasets.FashionMNIST, "FashionMNIST", augment=[], **kwargs)


class _CIFAR10(datasets.CIFAR10):
    """torchvision hashes all 170 MB of batch files at every start; check that they are present instead.
    The downloaded archive's md5 is still verified, once, when it is fetched."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def cifar10(**kwargs) -> Splits:
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    return _load(_CIFAR10, "CIFAR10", augment=augment, **kwargs)


def _load(
    cls,
    name: str,
    augment: list,
    root: str,
    download: bool,
    val_fraction: float,
    split_seed: int,
    mean: list[float],
    std: list[float],
) -> Splits:
    root = os.path.abspath(os.path.expanduser(root))
    to_tensor = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    plain, augmented = transforms.Compose(to_tensor), transforms.Compose(augment + to_tensor)

    train_full = _open(cls, name, root, download, train=True, transform=augmented)
    # The same files again, without augmentation, for the validation part of the training split.
    val_full = cls(root, train=True, transform=plain)
    test = cls(root, train=False, transform=plain)
    val_idx, train_idx = split_indices(len(train_full), [val_fraction], split_seed)
    return Splits(Subset(train_full, train_idx.tolist()), Subset(val_full, val_idx.tolist()), test)


def _open(cls, name: str, root: str, download: bool, **kwargs):
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError:
        pass  # not there yet (torchvision says "not found" or "corrupted")
    if not download:
        raise DatasetError(f"{name} is not in {root} and download is off (data.dataset.download=false).")
    try:
        return cls(root, download=True, **kwargs)
    except Exception as err:  # URLError, timeouts, HTTP errors: all mean "could not fetch"
        # torchvision lists every mirror it tried; the last line holds the actual network error.
        lines = [line.strip("<> ") for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise DatasetError(
            f"{name} is not in {root} and could not be downloaded ({reason}). "
            f"Connect to the internet once, or copy the dataset there."
        ) from None
