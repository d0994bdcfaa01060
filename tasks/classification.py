"""Single-label classification: cross-entropy on [B, C] logits, accuracy, a confusion matrix; for two classes
also AUROC and F1 (of class 1), by torchmetrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import Task, check_ids, describe, output_tensor, require


class Classification(Task):
    metrics = ("loss", "acc")

    def __init__(
        self, num_classes: int, monitor: str = "acc", mode: str = "max", confusion_matrix: bool = True
    ) -> None:
        require(num_classes >= 2, f"classification needs at least 2 classes, got num_classes={num_classes}")
        self.binary = num_classes == 2
        if self.binary:  # where one class is the positive one, as in most tables
            self.metrics = (*self.metrics, "auroc", "f1")
        super().__init__(monitor, mode)
        self.num_classes, self.confusion_matrix = num_classes, confusion_matrix

    def loss(self, output, batch):
        return F.cross_entropy(output, self.targets(batch))

    def init_metrics(self, device):
        # Sums, not torchmetrics, for loss, accuracy and the confusion matrix: the same numbers with no
        # import of torchmetrics, whose half second made the default run measurably slower (docs/tasks.md).
        sums = {
            "loss": torch.zeros((), device=device),
            "correct": torch.zeros((), device=device, dtype=torch.long),
            "count": torch.zeros((), device=device, dtype=torch.long),
        }
        if self.confusion_matrix:
            sums["confusion"] = torch.zeros(self.num_classes**2, device=device, dtype=torch.long)
        if self.binary:  # the exact curve (thresholds=None) from every score of the split
            from torchmetrics.classification import BinaryAUROC, BinaryF1Score

            sums["auroc"] = BinaryAUROC(validate_args=False).to(device)
            sums["f1"] = BinaryF1Score(validate_args=False).to(device)
        return sums

    def update(self, sums, output, batch):
        y = self.targets(batch)
        sums["loss"] += F.cross_entropy(output.float(), y, reduction="sum")
        pred = output.argmax(dim=1)
        sums["correct"] += (pred == y).sum()
        sums["count"] += y.shape[0]
        if "confusion" in sums:
            # scatter_add_, not bincount: bincount reads the max index back to the host, a sync per batch.
            sums["confusion"].scatter_add_(0, y * self.num_classes + pred, torch.ones_like(y))
        if self.binary:
            sums["auroc"].update(output.float().softmax(dim=1)[:, 1], y)
            sums["f1"].update(pred, y)  # class ids, not scores: no threshold, no check of their range

    def compute(self, sums):
        count = max(int(sums["count"]), 1)
        values = {"loss": sums["loss"].item() / count, "acc": sums["correct"].item() / count}
        if self.binary:
            values |= {"auroc": float(sums["auroc"].compute()), "f1": float(sums["f1"].compute())}
        return values

    def log_pictures(self, writer, sums, model, batch, step, prefix="val"):
        if "confusion" in sums:
            from board.pictures import log_per_class

            # IMAGES: confusion matrix and per-class accuracy; SCALARS: one accuracy curve per class.
            log_per_class(writer, sums["confusion"].view(self.num_classes, -1).cpu(), step, prefix)

    def predict(self, model, inputs, how):
        # The class by the logits' argmax, as `update` counts it, and each class's probability.
        logits = output_tensor(model(inputs)).float()
        names = how.class_names or [str(i) for i in range(self.num_classes)]
        chosen, probs = logits.argmax(dim=1).tolist(), logits.softmax(dim=1).tolist()
        return [
            {"class": names[c], **{f"prob_{n}": v for n, v in zip(names, row, strict=True)}}
            for c, row in zip(chosen, probs, strict=True)
        ]

    def check(self, output, batch):
        y = self.targets(batch)
        require(
            not y.is_floating_point() and y.dim() == 1,
            f"classification needs integer class labels of shape [batch], got {describe(y)} targets",
        )
        require(
            output.dim() == 2 and output.shape[1] == self.num_classes,
            f"classification needs model outputs of shape [batch, num_classes={self.num_classes}], "
            f"got {list(output.shape)}",
        )

    def check_targets(self, targets):
        not_integer = f"classification needs integer class labels, got {describe(targets)} targets"
        check_ids(targets, self.num_classes, "labels", "data.num_classes", not_integer)
