"""A batch that is a dict of two inputs: an 8x8 image and four measured features a sample, a class out.

The dataset's samples are dicts ({"image", "features", "label"}), which torch's default collate stacks into
a dict batch; the model takes the dict and returns a dict ({"logits", "features"}); the task reads its
fields by name. The class depends on both inputs: neither branch alone learns it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.splits import Splits
from tasks.base import Task, require


class Fields(Dataset):
    def __init__(self, image: torch.Tensor, features: torch.Tensor, label: torch.Tensor) -> None:
        self.image, self.features, self.label = image, features, label

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image[i], "features": self.features[i], "label": self.label[i]}


def two_inputs(size: int, seed: int) -> Splits:
    g = torch.Generator().manual_seed(seed)
    image, features = torch.randn(size, 1, 8, 8, generator=g), torch.randn(size, 4, generator=g)
    label = (image.mean(dim=(1, 2, 3)) > 0).long() * 2 + (features[:, 0] > 0).long()  # 4 classes
    cut = [0, size * 7 // 10, size * 85 // 100, size]
    return Splits(
        *(Fields(image[a:b], features[a:b], label[a:b]) for a, b in zip(cut, cut[1:], strict=False))
    )


class TwoBranch(torch.nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: int = 16) -> None:
        super().__init__()
        self.image = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU())
        self.features = torch.nn.Sequential(torch.nn.Linear(num_features, hidden), torch.nn.ReLU())
        self.head = torch.nn.Linear(2 * hidden, num_classes)

    def forward(self, x: dict) -> dict:
        joined = torch.cat([self.image(x["image"]), self.features(x["features"])], dim=1)
        return {"logits": self.head(joined), "features": joined}


class DictClassification(Task):
    metrics = ("loss", "acc")

    def __init__(self, num_classes: int, monitor: str = "acc", mode: str = "max") -> None:
        super().__init__(monitor, mode)
        self.num_classes = num_classes

    def inputs(self, batch):
        return {"image": batch["image"], "features": batch["features"]}

    def targets(self, batch):
        return batch["label"]

    def loss(self, output, batch):
        return F.cross_entropy(output, self.targets(batch))

    def init_sums(self, device):
        return {k: torch.zeros((), device=device) for k in ("loss", "right", "count")}

    def update(self, sums, output, batch) -> None:
        y = self.targets(batch)
        sums["loss"] += F.cross_entropy(output.float(), y, reduction="sum")
        sums["right"] += (output.argmax(1) == y).sum()
        sums["count"] += len(y)

    def compute(self, sums) -> dict[str, float]:
        n = float(sums["count"])
        return {"loss": float(sums["loss"]) / n, "acc": float(sums["right"]) / n}

    def check(self, output, batch) -> None:
        require(
            output.shape == (len(self.targets(batch)), self.num_classes),
            f"dict_classification needs logits [batch, {self.num_classes}], got {list(output.shape)}",
        )
