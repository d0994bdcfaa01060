"""Finding bumps in a 1-D signal: a task whose targets are variable-length lists (the positions of 1 to 3
bumps) and whose model computes its own losses in train mode, as a detector does. Its loss is the model's
dict of named losses; it has no validation loss; its metric is the F1 of the positions found."""

from __future__ import annotations

import torch

from tasks.base import Task


class Bumps(Task):
    metrics = ("f1", "precision", "recall")
    train_metrics = False  # in train mode the model returns its losses, not positions

    def __init__(self, tolerance: int = 1, monitor: str = "f1", mode: str = "max") -> None:
        super().__init__(monitor, mode)
        self.tolerance = tolerance

    def forward(self, model, batch):
        signals, positions = batch
        return model(signals, positions) if model.training else model(signals)

    def loss(self, output: dict, batch) -> dict:
        return output  # the model's own named losses

    def count(self, batch) -> int:
        return len(batch[1])

    def example_input(self, batch):
        return batch[0][:2]

    def init_sums(self, device):
        return {k: torch.zeros((), device=device) for k in ("found_right", "found", "true_found", "true")}

    def update(self, sums, output: list, batch) -> None:
        for found, true in zip(output, batch[1], strict=True):
            close = (found[:, None] - true[None, :]).abs() <= self.tolerance
            sums["found_right"] += close.any(dim=1).sum()  # found positions near a true one
            sums["found"] += len(found)
            sums["true_found"] += close.any(dim=0).sum()  # true positions near a found one
            sums["true"] += len(true)

    def compute(self, sums) -> dict:
        right, found, true_found, true = (
            float(sums[k]) for k in ("found_right", "found", "true_found", "true")
        )
        precision, recall = right / max(found, 1), true_found / max(true, 1)
        return {
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "precision": precision,
            "recall": recall,
        }

    def check(self, output, batch) -> None:
        if not isinstance(output, list) or len(output) != len(batch[1]):
            from tasks.base import TaskError

            raise TaskError(
                f"the model must return one tensor of positions per signal, got {type(output).__name__}"
            )
