"""scikit-learn's bundled 8x8 digits with four yes/no attributes of the digit shown: multi-label data."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from data.digits import digits
from data.splits import Splits

# One row per digit 0..9: even, greater than 4, prime, has a closed loop (0, 6, 8, 9).
ATTRIBUTES = torch.tensor(
    [[d % 2 == 0, d > 4, d in (2, 3, 5, 7), d in (0, 6, 8, 9)] for d in range(10)], dtype=torch.float32
)


def digit_attributes(
    val_fraction: float, test_fraction: float, split_seed: int, mean: list[float], std: list[float]
) -> Splits:
    splits = digits(val_fraction, test_fraction, split_seed, mean, std)

    # The same images and splits as data=digits; each digit label 0..9 becomes its multi-hot row [4].
    def relabel(split):
        images, labels = split.tensors
        return TensorDataset(images, ATTRIBUTES[labels])

    return Splits(relabel(splits.train), relabel(splits.val), relabel(splits.test))
