"""A dataset for the detection target checks: the boxes data with one target value set to a bad one.

`split` (train, val or test) and `position`: where the bad sample comes in that split's first epoch (for
train, setup/loaders.epoch_order's shuffled order, as tests/poisoned_data.py does), so that a test knows
which batch and which sample of it holds the bad value; `field` (boxes or labels), `box` (which of the
sample's boxes) and `value` (four numbers for boxes, one for labels; inf and nan as Hydra's
override grammar spells them, or as strings). Configs
point at it with `data.dataset._target_=tests.bad_boxes.bad_boxes +data.dataset.split=val ...`.
"""

from __future__ import annotations

import torch

from data.boxes import boxes
from data.splits import Splits
from setup.loaders import epoch_order


def bad_boxes(split: str, position: int, field: str, value, box: int = 0, **kwargs) -> Splits:
    splits = boxes(**kwargs)
    dataset = getattr(splits, split)
    index = int(epoch_order(len(dataset), kwargs["seed"], 0, split == "train")[position])
    n = dataset.count[index]
    assert box < n, f"sample {index} has {n} boxes"  # a misplaced test, not the checks under test
    table = dataset.boxes if field == "boxes" else dataset.labels
    numbers = [float(v) for v in value] if field == "boxes" else int(value)
    table[index, box] = torch.tensor(numbers, dtype=table.dtype)
    return splits
