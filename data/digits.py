"""scikit-learn's bundled 8x8 digits, held in memory as tensors: the offline default dataset."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from data.bundled import digits_table
from data.splits import Splits, split_indices


def digits(
    val_fraction: float, test_fraction: float, split_seed: int, mean: list[float], std: list[float]
) -> Splits:
    pixels, target = digits_table()  # ships with scikit-learn: no download
    # Pixels are 0..16; scale to [0, 1], then normalize like any torchvision dataset.
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    labels = torch.tensor(target, dtype=torch.long)
    val, test, train = split_indices(len(labels), [val_fraction, test_fraction], split_seed)
    # TensorDataset tells the loaders to slice whole batches by index, with no per-sample Python work.
    return Splits(*(TensorDataset(images[i], labels[i]) for i in (train, val, test)))
