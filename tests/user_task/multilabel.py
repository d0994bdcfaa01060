"""Multi-label classification: each sample carries any number of K labels (multi-hot float targets
[B, K]). Binary cross-entropy on [B, K] logits; micro F1 over every (sample, label) decision and the
share of samples with all K labels right; best.pt holds the best val/f1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import Task, TaskError


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

    def init_sums(self, device):
        # Per label: true positives, false positives, false negatives (micro F1 adds them over labels).
        counts = {
            k: torch.zeros(self.num_labels, device=device, dtype=torch.long) for k in ("tp", "fp", "fn")
        }
        return {
            "loss": torch.zeros((), device=device),
            **counts,
            "exact": torch.zeros((), device=device, dtype=torch.long),
            "count": torch.zeros((), device=device, dtype=torch.long),
        }

    def update(self, sums, output, batch):
        y = self.targets(batch)
        sums["loss"] += F.binary_cross_entropy_with_logits(output.float(), y.float(), reduction="sum")
        pred, true = torch.sigmoid(output.float()) > self.threshold, y > 0.5
        sums["tp"] += (pred & true).sum(dim=0)
        sums["fp"] += (pred & ~true).sum(dim=0)
        sums["fn"] += (~pred & true).sum(dim=0)
        sums["exact"] += (pred == true).all(dim=1).sum()
        sums["count"] += y.shape[0]

    def compute(self, sums):
        n = max(int(sums["count"]), 1)
        tp, fp, fn = (int(sums[k].sum()) for k in ("tp", "fp", "fn"))
        return {
            "loss": sums["loss"].item() / (n * self.num_labels),  # the mean over B x K, as in training
            "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "exact_match": int(sums["exact"]) / n,
        }

    def log_pictures(self, writer, sums, model, batch, step, prefix="val"):
        # SCALARS: one F1 curve per label (val_label_f1/0, /1, ...), from the same sums.
        tp, fp, fn = (sums[k].cpu() for k in ("tp", "fp", "fn"))
        for i, f1 in enumerate((2 * tp / (2 * tp + fp + fn).clamp(min=1)).tolist()):
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
