"""The one thing every dataset constructor returns, and the seeded split they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from system.errors import UserError  # torch-free, one file: copy it along with data/ (its docstring)


class DatasetError(UserError):
    """A dataset that cannot be loaded for a reason the user can fix (missing path, offline, empty)."""


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    # What only the files tell (a table's number of features and classes, whether its target is a class or
    # a real, the target's train mean and std), as data config keys: written into cfg.data before the task
    # and the model are built (setup/parts.py build_data), whose configs read them (${data.num_classes}).
    found: dict = field(default_factory=dict)


def split_indices(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split range(n) at random into len(fractions)+1 parts; the last part takes what remains.

    Seeded, so the same seed gives the same split on any machine.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(n * f) for f in fractions]
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start : start + size])
        start += size
    parts.append(perm[start:])
    return parts
