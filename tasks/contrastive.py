"""Contrastive pretraining (SimCLR): two random views of each image, made on the device; the model's output
rows are their embeddings, pulled together per image and pushed from the batch's other images by NT-Xent.
No labels are learned from: the monitor is a k-nearest-neighbour accuracy of each evaluated image's
embedding against the train split's (Task.reads_train_split), which reads the labels only to score."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.base import Task, describe, output_tensor, require


class Contrastive(Task):
    metrics = ("knn_acc",)
    # A training batch's output holds two views of each image, not one row a label: no train/knn_acc.
    train_metrics = False
    reads_train_split = True

    def __init__(
        self,
        temperature: float = 0.2,
        k: int = 5,
        min_scale: float = 0.6,
        max_shift: float = 0.2,
        max_rotation: float = 15.0,
        noise: float = 0.1,
        monitor: str = "knn_acc",
        mode: str = "max",
    ) -> None:
        require(temperature > 0, f"task.temperature={temperature} must be above 0")
        require(k >= 1, f"task.k={k} must be at least 1")
        require(0 < min_scale <= 1, f"task.min_scale={min_scale} must be in (0, 1]")
        super().__init__(monitor, mode)
        self.temperature, self.k = temperature, k
        self.min_scale, self.max_shift, self.max_rotation, self.noise = (
            min_scale,
            max_shift,
            max_rotation,
            noise,
        )

    # --- training ---------------------------------------------------------------------------------------
    def view(self, x: torch.Tensor) -> torch.Tensor:
        """A random view of each image: zoomed in (a crop), shifted, turned, with Gaussian noise, all in one
        affine resampling on the device. The numbers come from torch's global generator, which checkpoints
        save and restore: a resumed run draws the same views."""
        n, dtype = x.shape[0], x.dtype
        x = x.float()
        rand = lambda: torch.rand(n, device=x.device)  # noqa: E731
        scale = self.min_scale + (1 - self.min_scale) * rand()
        angle = math.radians(self.max_rotation) * (2 * rand() - 1)
        shift = self.max_shift * (2 * torch.rand(n, 2, device=x.device) - 1)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        return (out + self.noise * torch.randn_like(out)).to(dtype)

    def forward(self, model, batch):
        x = self.inputs(batch)
        if not model.training:  # evaluation: the plain images' embeddings, for the kNN monitor
            return output_tensor(model(x))
        return output_tensor(model(torch.cat([self.view(x), self.view(x)])))

    def loss(self, output, batch):
        return nt_xent(output, self.temperature)

    # --- evaluation -------------------------------------------------------------------------------------
    def init_metrics(self, device):
        # Rows per sample, in lists: the loop concatenates them and gathers them from every DDP rank.
        return {"bank": [], "bank_labels": [], "rows": [], "labels": []}

    def update_train(self, metrics, output, batch):
        metrics["bank"].append(output.float())
        metrics["bank_labels"].append(self.targets(batch))

    def update(self, metrics, output, batch):
        metrics["rows"].append(output.float())
        metrics["labels"].append(self.targets(batch))

    def compute(self, metrics):
        if not len(metrics["bank"]) or not len(metrics["rows"]):
            return {}
        return {"knn_acc": knn_accuracy(metrics, self.k)}

    # --- prediction -------------------------------------------------------------------------------------
    def predict(self, model, inputs, how):
        # The embedding each image gets: what a kNN lookup or a probe of your own reads.
        return [{"embedding": row} for row in output_tensor(model(inputs)).float().tolist()]

    # --- before training --------------------------------------------------------------------------------
    def check(self, output, batch):
        y = self.targets(batch)
        require(
            output.dim() == 2 and output.shape[0] == y.shape[0],
            f"contrastive needs one embedding row a sample, [batch, dim], got {list(output.shape)} for "
            f"{describe(y)} labels",
        )
        require(
            not y.is_floating_point() and y.dim() == 1,
            f"contrastive's kNN monitor needs integer class labels of shape [batch], got {describe(y)}",
        )


def nt_xent(output: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: rows i and i + n of `output` ([2n, dim]) are two views of one image; each row's
    cosine similarities to the 2n - 1 others, over `temperature`, are the logits of a cross-entropy whose
    class is its other view. The negatives are this batch's (this rank's, under DDP)."""
    z = F.normalize(output_tensor(output).float(), dim=1)
    n = z.shape[0] // 2
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    other = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, other)


def knn_accuracy(metrics, k: int) -> float:
    """The share of evaluated rows whose k nearest train rows (cosine) mostly carry their own label."""
    bank = F.normalize(metrics["bank"], dim=1)
    rows = F.normalize(metrics["rows"], dim=1)
    nearest = (rows @ bank.T).topk(min(k, bank.shape[0]), dim=1).indices
    votes = metrics["bank_labels"].long()[nearest].mode(dim=1).values
    return (votes == metrics["labels"].long()).float().mean().item()
