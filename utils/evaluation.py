"""A whole split through the model: the task's metric sums, kept on the device, summed over DDP ranks once."""

from __future__ import annotations

import torch

from utils.distributed import all_reduce_sum
from utils.runtime import autocast, to_device


@torch.no_grad()
def evaluate(model, loader, task, device, precision: str, channels_last: bool = False, limit=None, stop=None):
    """Returns (metrics, sums, first batch on the device): the task's numbers for the split, the summed
    tensors they came from (pictures read them, e.g. the confusion matrix), and a batch to draw from.
    `stop`, asked after each batch: when it says so, the evaluation ends at once and returns None."""
    was_training = model.training
    model.eval()
    sums = task.init_sums(device)
    first = None
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        batch = to_device(batch, device, channels_last)
        first = batch if first is None else first
        with autocast(device, precision):
            output = task.forward(model, batch)
        task.update(sums, output, batch)
        if stop is not None and stop():
            model.train(was_training)
            return None
    model.train(was_training)
    # Under DDP each rank saw its own shard of the split: sum over ranks (a no-op in a single process).
    keys = sorted(sums)
    sums = dict(zip(keys, all_reduce_sum(*(sums[k] for k in keys)), strict=True))
    return task.compute(sums), sums, first
