"""Semantic segmentation: per-pixel cross-entropy on [B, C, H, W] class scores, mean IoU and pixel
accuracy from a confusion matrix summed on the device, and image / true mask / predicted mask pictures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.base import Task, check_ids, describe, output_tensor, require


class Segmentation(Task):
    metrics = ("loss", "miou", "pixel_acc")

    def __init__(
        self,
        num_classes: int,
        monitor: str = "miou",
        mode: str = "max",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        num_pictures: int = 4,
    ) -> None:
        """`mean` / `std`: the data's normalization, undone to show the images (None: shown as they are)."""
        super().__init__(monitor, mode)
        require(num_classes >= 2, f"segmentation needs at least 2 classes, got num_classes={num_classes}")
        self.num_classes, self.mean, self.std, self.num_pictures = num_classes, mean, std, num_pictures

    def loss(self, output, batch):
        return F.cross_entropy(output, self.targets(batch))

    def init_metrics(self, device):
        return {
            "loss": torch.zeros((), device=device),
            # Rows are true classes, columns predictions, over every pixel of the split.
            "confusion": torch.zeros(self.num_classes**2, device=device, dtype=torch.long),
        }

    def update(self, sums, output, batch):
        y = self.targets(batch)
        sums["loss"] += F.cross_entropy(output.float(), y, reduction="sum")
        pred = output.argmax(dim=1)
        # scatter_add_, not bincount: bincount reads the max index back to the host, a sync per batch.
        cells = (y * self.num_classes + pred).flatten()
        sums["confusion"].scatter_add_(0, cells, torch.ones_like(cells))

    def compute(self, sums):
        confusion = sums["confusion"].view(self.num_classes, -1).double().cpu()
        pixels = max(confusion.sum().item(), 1)
        return {
            "loss": sums["loss"].item() / pixels,
            "miou": mean_iou(confusion),
            "pixel_acc": confusion.trace().item() / pixels,
        }

    def log_pictures(self, writer, sums, model, batch, step, prefix="val"):
        from board.pictures import add_png

        # IMAGES: for the first samples, one row each: the image, its true mask, the predicted mask.
        n = self.num_pictures
        x = self.inputs(batch)[:n]
        pred = self.forward(model, (x,)).argmax(dim=1)
        image = mask_rows(x, self.targets(batch)[:n], pred, self.num_classes, self.mean, self.std)
        add_png(writer, f"{prefix}/image_true_predicted", image, step)

    def predict(self, model, inputs, how):
        # One mask a sample, a class id a pixel: written as a PNG beside the CSV (16-bit past 256 classes).
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        masks = output_tensor(model(inputs)).argmax(dim=1).to(dtype).cpu()
        return [{"mask": mask} for mask in masks]

    def check(self, output, batch):
        y = self.targets(batch)
        require(
            not y.is_floating_point() and y.dim() == 3,
            f"segmentation needs integer class masks of shape [batch, height, width], got {describe(y)}",
        )
        expected = [y.shape[0], self.num_classes, *y.shape[1:]]
        require(
            list(output.shape) == expected,
            f"segmentation needs model outputs of shape [batch, num_classes={self.num_classes}, height, "
            f"width] = {expected} for masks {list(y.shape)}, got {list(output.shape)}",
        )

    def check_targets(self, targets):
        not_integer = f"segmentation needs integer class masks, got {describe(targets)}"
        check_ids(targets, self.num_classes, "mask classes", "data.num_classes", not_integer)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes of intersection / union (true positives / (row + column - true positives)),
    over the classes present in the targets or the predictions; NaN if there are none."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
    present = union > 0
    return (hits[present] / union[present]).mean().item() if bool(present.any()) else math.nan


def mask_rows(x, true, pred, num_classes: int, mean=None, std=None, min_size: int = 64) -> torch.Tensor:
    """uint8 [3, H, W]: one row a sample, [image | true mask | predicted mask], 2 px apart. Masks are
    coloured by class (viridis, background dark); small images are enlarged, nearest neighbour."""
    from board.pictures import colormap

    x, true, pred = x.detach().float().cpu(), true.detach().cpu(), pred.detach().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(list(std)).view(1, -1, 1, 1) + torch.tensor(list(mean)).view(1, -1, 1, 1)
    if x.shape[1] != 3:
        x = x[:, :1].expand(-1, 3, -1, -1)  # grey, or other band counts: the first channel, as grey
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    n, _, h, w = x.shape
    masks = [colormap(m.float() / max(num_classes - 1, 1)) for m in (true, pred)]  # [3, n, h, w] each
    pad = 2
    scale = max(1, math.ceil(min_size / max(h, w)))
    canvas = torch.zeros(3, n * (h + pad) + pad, 3 * (w + pad) + pad, dtype=torch.uint8)
    for k in range(n):
        tiles = [images[k], *(m[:, k] for m in masks)]
        top = pad + k * (h + pad)
        for j, tile in enumerate(tiles):
            left = pad + j * (w + pad)
            canvas[:, top : top + h, left : left + w] = tile
    return canvas.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
