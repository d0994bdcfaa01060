"""Single-label classification: cross-entropy on [B, C] logits, accuracy from a confusion matrix, and for two
classes AUROC and F1 (of class 1), all torchmetrics."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC, BinaryF1Score

from tasks.base import ConfusionMatrix, Task, check_ids, collection, describe, mean_metric, require


class Classification(Task):
    metrics = ("loss", "acc")

    def __init__(
        self, num_classes: int, monitor: str = "acc", mode: str = "max", confusion_matrix: bool = True
    ) -> None:
        """`confusion_matrix`: draw it (and per-class accuracy) in TensorBoard; accuracy is read from it."""
        require(num_classes >= 2, f"classification needs at least 2 classes, got num_classes={num_classes}")
        self.binary = num_classes == 2
        if self.binary:  # where one class is the positive one, as in most tables
            self.metrics = (*self.metrics, "auroc", "f1")
        super().__init__(monitor, mode)
        self.num_classes, self.confusion_matrix = num_classes, confusion_matrix

    def loss(self, output, batch):
        return F.cross_entropy(output, self.targets(batch))

    def init_metrics(self, device):
        metrics = {"loss": mean_metric(), "confusion": ConfusionMatrix(self.num_classes)}
        if self.binary:  # thresholds=None: the exact curve, from every score of the split
            metrics |= {"auroc": BinaryAUROC(validate_args=False), "f1": BinaryF1Score(validate_args=False)}
        return collection(device, **metrics)

    def update(self, metrics, output, batch):
        y = self.targets(batch)
        metrics["loss"].update(F.cross_entropy(output.float(), y, reduction="none"))
        pred = output.argmax(dim=1)
        metrics["confusion"].update(pred, y)
        if self.binary:
            metrics["auroc"].update(output.float().softmax(dim=1)[:, 1], y)
            metrics["f1"].update(pred, y)  # class ids, not scores: no threshold, no check of their range

    def compute(self, metrics):
        confusion = metrics["confusion"].compute()
        values = {
            "loss": float(metrics["loss"].compute()),
            "acc": int(confusion.trace()) / max(int(confusion.sum()), 1),
        }
        if self.binary:
            values |= {"auroc": float(metrics["auroc"].compute()), "f1": float(metrics["f1"].compute())}
        return values

    def log_pictures(self, writer, metrics, model, batch, step, prefix="val"):
        if self.confusion_matrix:
            from utils.tensorboard.pictures import log_per_class

            # IMAGES: confusion matrix and per-class accuracy; SCALARS: one accuracy curve per class.
            log_per_class(writer, metrics["confusion"].compute().cpu(), step, prefix)

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
