"""torchvision's MNIST, FashionMNIST and CIFAR-10, downloaded into the cache directory on first use.

The validation split is carved from the official training split by seed; the official test split stays
the test split. Offline and absent, they fail with one line that names the dataset and the path.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
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


# --- Examples in each dataset's own on-disk format (the tests train on them; nothing is downloaded) --------


def write_mnist_example(directory, n_train: int = 40, n_test: int = 12) -> list[str]:
    """MNIST's raw IDX files of random digits where torchvision reads them (root/MNIST/raw/); the config
    overrides that point data=mnist at them, with no download."""
    return _write_idx(Path(directory), "MNIST", n_train, n_test)


def write_fashion_mnist_example(directory, n_train: int = 40, n_test: int = 12) -> list[str]:
    """FashionMNIST's raw IDX files (root/FashionMNIST/raw/), as write_mnist_example."""
    return _write_idx(Path(directory), "FashionMNIST", n_train, n_test)


def _write_idx(root: Path, name: str, n_train: int, n_test: int) -> list[str]:
    """IDX: a big-endian magic number (0x08 unsigned bytes, then the number of dimensions), each
    dimension's size, then the raw uint8 values. torchvision reads the extracted files (no .gz), and checks
    only that they exist: no md5."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return [f"data.dataset.root='{root}'", "data.dataset.download=false"]


def write_cifar10_example(directory, n_per_batch: int = 8) -> list[str]:
    """CIFAR-10's python format (root/cifar-10-batches-py/): five training batches and a test batch, each
    a pickled dict of uint8 rows (3x32x32, channel-major) and labels, and batches.meta with the class
    names. _CIFAR10 above checks only that they exist (no md5). The originals are Python 2 pickles whose
    str keys torchvision reads back as str, as these are."""
    root = Path(directory)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [name for name, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]:
        batch = {
            "data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=n_per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / datasets.CIFAR10.meta["filename"]).write_bytes(pickle.dumps(meta))
    return [f"data.dataset.root='{root}'", "data.dataset.download=false"]
