"""`debug=overfit`: train on the same few batches every epoch, without augmentation, until the loss is ~0.

The fastest check that a model, its loss and the data are wired right: a model that cannot memorize four
batches has a bug, not a hyperparameter problem. `overfit_splits` keeps the first `n_samples` of the
training split and sees them through the validation split's transform (no random crops or flips), and
validates on those same samples, so val/<metric> shows how far the memorization got; the test split stays
as it is. `same_batches_every_epoch` turns off the training loader's shuffle, so each epoch repeats the
same batches in the same order.
"""

from __future__ import annotations

import copy

from torch.utils.data import Dataset, Subset, TensorDataset

from data.splits import Splits


def _unwrap(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """The dataset under any Subset wrappers, and the indices into it (None: all of it, in order)."""
    indices = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _plain_view(train: Dataset, val: Dataset) -> tuple[Dataset, bool]:
    """`train` seen through `val`'s transform, when both are views of datasets of one kind that read
    samples through a `transform` attribute (torchvision datasets: MNIST, CIFAR-10, ImageFolder). Returns
    the dataset and whether its transform was replaced."""
    base, indices = _unwrap(train)
    val_base, _ = _unwrap(val)
    if (
        type(base) is not type(val_base)
        or not hasattr(base, "transform")
        or getattr(base, "transform", None) is getattr(val_base, "transform", None)
    ):
        return train, False
    plain = copy.copy(base)  # shares the samples; only the transform differs
    plain.transform = val_base.transform
    if hasattr(base, "transforms") and hasattr(val_base, "transforms"):
        plain.transforms = val_base.transforms  # torchvision's VisionDataset keeps both
    return (plain if indices is None else Subset(plain, indices)), True


def _first(dataset: Dataset, n: int) -> Dataset:
    if isinstance(dataset, TensorDataset):  # stays a TensorDataset: the loaders slice it by whole batches
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, list(range(n)))


def overfit_splits(splits: Splits, n_samples: int) -> tuple[Splits, str]:
    """The first n_samples of the training split, without augmentation, for training and validation; the
    test split unchanged. Returns the new splits and one line for the log saying what was done."""
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} must be at least 1")
    n = min(n_samples, len(splits.train))
    train, replaced = _plain_view(splits.train, splits.val)
    train = _first(train, n)
    if isinstance(splits.train, TensorDataset):
        how = "in-memory tensors, no augmentation to turn off"
    elif replaced:
        how = "through the validation transform, so without augmentation"
    else:
        how = "with the training split's own transform (no validation transform of the same data found)"
    note = (
        f"debug=overfit: training on the first {n} training samples, the same batches every epoch, {how}; "
        "validating on those same samples"
    )
    return Splits(train=train, val=train, test=splits.test, found=splits.found), note


def same_batches_every_epoch(loader) -> None:
    """Turn off the shuffle of a loader made by setup.loaders.build_dataloaders (TensorBatches or
    SampledLoader): every epoch then yields the same batches in the same order."""
    target = getattr(loader, "sampler", loader)
    if not hasattr(target, "shuffle"):
        raise TypeError(f"{type(loader).__name__} is not a loader of setup/loaders.py (it has no shuffle)")
    target.shuffle = False
