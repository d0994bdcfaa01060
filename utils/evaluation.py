"""Loss and accuracy over a whole split, accumulated on the device and synced once at the end."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.distributed import all_reduce_sum
from utils.runtime import autocast


def logits_of(output) -> torch.Tensor:
    """Models return logits, or a dict / object with a `logits` entry (as Hugging Face models do)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


@torch.no_grad()
def evaluate(model, loader, device: torch.device, precision: str, channels_last: bool = False) -> dict:
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    # [true class, predicted class] counts, flattened; they stay on the device until the end.
    confusion, c = torch.zeros(0, device=device, dtype=torch.long), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = logits_of(model(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(dim=1)
        correct += (pred == y).sum()
        count += y.shape[0]
        if not c:
            c = logits.shape[1]
            confusion = torch.zeros(c * c, device=device, dtype=torch.long)
        # scatter_add_, not bincount: bincount reads the max index back to the host, a sync per batch.
        confusion.scatter_add_(0, y * c + pred, torch.ones_like(y))
    model.train(was_training)
    # Under DDP each rank saw its own shard of the split: sum over ranks (a no-op in a single process).
    loss_sum, correct, count_t, confusion = all_reduce_sum(
        loss_sum, correct, torch.tensor(count, device=device), confusion
    )
    count = max(int(count_t), 1)
    return {
        "loss": loss_sum.item() / count,
        "acc": correct.item() / count,
        "count": count,
        "confusion": confusion.view(c, c).cpu(),  # [C, C] long; rows: true classes, columns: predictions
    }
