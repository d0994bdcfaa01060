"""The one thing every dataset constructor returns, and the seeded split they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


class DatasetError(Exception):
    """A dataset that cannot be loaded for a reason the user can fix (missing path, offline, empty)."""


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


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
