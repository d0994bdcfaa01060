"""Multi-label classification: each sample carries any number of K labels (multi-hot float targets
[B, K]). Binary cross-entropy on [B, K] logits; micro F1 over every (sample, label) decision and the
share of samples with all K labels right; best.pt holds the best val/f1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

from tasks.base import Task, TaskError, collection, mean_metric


class MultiLabel(Task):
    metrics = ("loss", "f1", "exact_match")

    def __init__(
        self, num_labels: int, monitor: str = "f1", mode: str = "max", threshold: float = 0.5
    ) -> None:
        super().__init__(monitor, mode)
        if num_labels < 1:
            raise TaskError(f"multilabel needs at least 1 label, got num_labels={num_labels}")
        self.num_labels, self.threshold = num_labels, threshold

    def loss(self, output, batch):
        return F.binary_cross_entropy_with_logits(output, self.targets(batch))

    def init_metrics(self, device):
        k = self.num_labels
        return collection(
            device,
            loss=mean_metric(),
            f1=MultilabelF1Score(k, average="micro", validate_args=False),  # over every decision
            label_f1=MultilabelF1Score(k, average="none", validate_args=False),  # one per label
            exact_match=MultilabelExactMatch(k, validate_args=False),
        )

    def update(self, metrics, output, batch):
        y = self.targets(batch)
        metrics["loss"].update(
            F.binary_cross_entropy_with_logits(output.float(), y.float(), reduction="none")
        )
        # 0/1 decisions, not probabilities: torchmetrics would check a float input's range on the host.
        pred, true = (torch.sigmoid(output.float()) > self.threshold).long(), y.long()
        for name in ("f1", "label_f1", "exact_match"):
            metrics[name].update(pred, true)

    def log_pictures(self, writer, metrics, model, batch, step, prefix="val"):
        # SCALARS: one F1 curve per label (val_label_f1/0, /1, ...).
        for i, f1 in enumerate(metrics["label_f1"].compute().tolist()):
            writer.add_scalar(f"{prefix}_label_f1/{i}", f1, step)

    def check(self, output, batch):
        y = self.targets(batch)
        if not y.is_floating_point() or y.dim() != 2 or y.shape[1] != self.num_labels:
            raise TaskError(
                f"multilabel needs multi-hot float targets of shape [batch, num_labels={self.num_labels}], "
                f"got {str(y.dtype).replace('torch.', '')} {list(y.shape)}"
            )
        if output.shape != y.shape:
            raise TaskError(
                f"multilabel needs model outputs shaped like the targets {list(y.shape)}, got {list(output.shape)}"
            )

    def check_targets(self, targets):
        if not targets.is_floating_point():
            raise TaskError(f"multilabel needs multi-hot float targets, got {targets.dtype} targets")
        if not bool(((targets == 0) | (targets == 1)).all()):
            raise TaskError("multilabel needs multi-hot targets of 0.0 and 1.0 only, got other values")
