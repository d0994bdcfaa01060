"""scikit-learn's bundled diabetes table (442 patients, 10 features, one real target), held in memory as
tensors: the offline regression dataset."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from data.bundled import DIABETES_FEATURES, diabetes_table
from data.splits import Splits, split_indices


def diabetes(
    val_fraction: float, test_fraction: float, split_seed: int, target_mean: float, target_std: float
) -> Splits:
    """Features standardized with the train split's statistics alone; the target (disease progression a
    year on, 25..346) mapped to (y - target_mean) / target_std with fixed constants from the config, as
    images are with their fixed mean and std, so the regression task can report metrics in the original
    units. Targets are [N, 1] floats, the shape of the model's [B, 1] output."""
    table, progression = diabetes_table()  # ships with scikit-learn: no download
    features = torch.tensor(table, dtype=torch.float32)
    target = (torch.tensor(progression, dtype=torch.float32).unsqueeze(1) - target_mean) / target_std
    val, test, train = split_indices(len(target), [val_fraction, test_fraction], split_seed)
    mean, std = features[train].mean(dim=0), features[train].std(dim=0).clamp(min=1e-8)
    features = (features - mean) / std
    # What predict.py reads a new table's rows by: the columns (age, sex, bmi, ...) and their standardization.
    found = {
        "features": list(DIABETES_FEATURES),
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
    }
    # TensorDataset tells the loaders to slice whole batches by index, with no per-sample Python work.
    return Splits(*(TensorDataset(features[i], target[i]) for i in (train, val, test)), found=found)
