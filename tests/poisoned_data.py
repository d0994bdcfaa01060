"""A dataset for the non-finite tests: scikit-learn's digits with one training image set to NaN.

`position` is where that image comes in epoch 0's shuffled order (setup/loaders.epoch_order), so a test
knows which batch, and so which optimizer step, gets the NaN loss. Configs point at it with
`data.dataset._target_=tests.poisoned_data.poisoned_digits +data.dataset.position=N +data.dataset.seed=S`.
"""

from __future__ import annotations

from data.digits import digits
from data.splits import Splits
from setup.loaders import epoch_order


def poisoned_digits(position: int, seed: int, **kwargs) -> Splits:
    splits = digits(**kwargs)
    images = splits.train.tensors[0]
    index = epoch_order(len(images), seed, 0, True)[position]
    images[index] = float("nan")
    return splits
