"""A fork's task whose monitor needs the train split: classification plus a k-nearest-neighbour accuracy of
each evaluated sample's output against the train split's outputs (Task.reads_train_split), as a
self-supervised run would monitor its embeddings. For tests/test_train_split_metric.py."""

from __future__ import annotations

from tasks.classification import Classification
from tasks.contrastive import knn_accuracy


class KnnClassification(Classification):
    metrics = (*Classification.metrics, "knn_acc")
    reads_train_split = True

    def __init__(self, num_classes: int, k: int = 5, monitor: str = "knn_acc", mode: str = "max") -> None:
        super().__init__(num_classes, monitor, mode, confusion_matrix=False)
        self.k = k

    def init_metrics(self, device):
        sums = super().init_metrics(device)
        # Rows per sample, kept in lists: the loop concatenates them and gathers them from every rank.
        return {**sums, "bank": [], "bank_labels": [], "rows": [], "labels": []}

    def update_train(self, sums, output, batch):
        sums["bank"].append(output.float())
        sums["bank_labels"].append(self.targets(batch))

    def update(self, sums, output, batch):
        super().update(sums, output, batch)
        sums["rows"].append(output.float())
        sums["labels"].append(self.targets(batch))

    def compute(self, sums):
        numbers = super().compute(sums)
        if len(sums["bank"]):  # not at a training log line: its metrics see training batches only
            numbers["knn_acc"] = knn_accuracy(sums, self.k)
        return numbers
