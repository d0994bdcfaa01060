"""A whole split through the model: the task's metrics, kept on the device, summed (or synced) over DDP ranks
once at the end."""

from __future__ import annotations

import torch

from setup.distributed import all_gather_cat, all_reduce_sum, max_over_ranks
from setup.runtime import autocast, to_device
from setup.sharding import is_sharded


@torch.no_grad()
def evaluate(
    model, loader, task, device, precision: str, channels_last: bool = False, limit=None, stop=None,
    split: str = "evaluation", train=None,
):  # fmt: skip
    """Returns (numbers, metrics, first batch on the device): the task's numbers for the split, the metrics
    they came from (pictures read them, e.g. the confusion matrix), and a batch to draw from.
    `stop`, asked after each batch: when it says so, the evaluation ends at once and returns None.
    `train`: the train split in order (Loaders.train_in_order), for a task that reads it (a kNN monitor):
    its batches go to `task.update_train` first, through the same model; `limit` bounds them too (a quick
    check's `trainer.limit_val_batches=2` must not read a whole train split)."""
    was_training = model.training
    model.eval()
    metrics = task.init_metrics(device)
    first = None
    if getattr(task, "reads_train_split", False):
        if train is None:
            raise ValueError(f"{type(task).__name__} reads the train split: pass evaluate(train=...)")
        seen, done = None, 0
        for batch in train:
            if limit is not None and done >= limit:
                break
            batch = seen = to_device(batch, device, channels_last)
            done += 1
            with autocast(device, precision):
                output = task.forward(model, batch)
            task.update_train(metrics, output, batch)
            if stop is not None and stop():
                model.train(was_training)
                return None
        if is_sharded(model) and seen is not None:
            _keep_pace(model, task, seen, done, device, precision)
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        task.check_batch(batch, f"{split} batch {i}")  # on the CPU side: no device sync
        batch = to_device(batch, device, channels_last)
        first = batch if first is None else first
        with autocast(device, precision):
            output = task.forward(model, batch)
        task.update(metrics, output, batch)
        if stop is not None and stop():
            model.train(was_training)
            return None
    if is_sharded(model):
        _keep_pace(model, task, first, min(len(loader), limit if limit is not None else len(loader)), device,
                   precision)  # fmt: skip
    model.train(was_training)
    return measure(task, metrics), metrics, first


def measure(task, metrics) -> dict[str, float]:
    """The task's numbers from its metrics, the same on every DDP rank (every rank must call this): its
    tensors summed over the ranks in one call, each list of tensors (rows kept per sample: embeddings,
    labels) concatenated and gathered from every rank, each torchmetrics metric computed on every rank
    (synced over them; it keeps the result, so that what the task reads later, its pictures on rank 0
    alone, needs no rank's help)."""
    if isinstance(metrics, dict):  # in sorted order: every rank gathers the same lists in the same order
        for key in sorted(k for k, v in metrics.items() if isinstance(v, list)):
            rows = metrics[key]
            metrics[key] = all_gather_cat(torch.cat(rows) if rows else torch.zeros(0))
    parts = metrics.values() if isinstance(metrics, dict) else [metrics]
    for metric in parts:
        if not isinstance(metric, torch.Tensor) and hasattr(metric, "compute"):
            metric.compute()
    if isinstance(metrics, dict):
        sums = sorted(k for k, v in metrics.items() if isinstance(v, torch.Tensor))
        if sums:
            metrics.update(zip(sums, all_reduce_sum(*(metrics[k] for k in sums)), strict=True))
    return task.compute(metrics)


def _keep_pace(model, task, batch, done: int, device, precision: str) -> None:
    """A sharded model's forward is a collective (each block gathers its weights from every rank), and the
    ranks' evaluation shards may differ by a batch: a rank that has run out repeats a forward on a batch it
    has, uncounted, until every rank has made as many."""
    for _ in range(max_over_ranks(done, device) - done):
        with autocast(device, precision):
            task.forward(model, batch)
