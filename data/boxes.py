"""Synthetic shapes for object detection, drawn from the seed in memory: 1 to `max_shapes` rectangles,
ellipses and triangles of random size, aspect and colour on a dark noisy background, each with its box.
Samples are `(image [3, S, S], {"boxes": float [n, 4] xyxy in pixels, "labels": int64 [n]})` with n
varying from image to image, so they do not stack: `collate` batches them (images stacked, targets a
list). No download, the same images on any machine for the same seed."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.splits import DatasetError, Splits

CLASSES = ("rectangle", "ellipse", "triangle")  # labels 0, 1, 2


def render_boxes(
    n: int, image_size: int, max_shapes: int, generator: torch.Generator, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images, float [n, 3, S, S] in [0, 1]; their boxes, float [n, max_shapes, 4]; labels, long
    [n, max_shapes]; and how many of the slots each image uses, long [n]. Each shape lies in a cell of its
    own of a 2 x 2 grid, so none hides another and a box is exactly the pixels its shape covers. All
    images are drawn at once, one shape slot at a time."""
    size, cell = image_size, image_size / 2

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    images = uniform(0.0, 0.35, n, 3, 1, 1).expand(n, 3, size, size).clone()
    boxes, labels = torch.zeros(n, max_shapes, 4), torch.zeros(n, max_shapes, dtype=torch.long)
    count = torch.randint(1, max_shapes + 1, (n,), generator=generator)
    cells = torch.rand(n, 4, generator=generator).argsort(dim=1)  # each image's cells, in random order
    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    for slot in range(max_shapes):
        kind = torch.randint(0, len(CLASSES), (n, 1, 1), generator=generator)
        ry, rx = uniform(0.22 * cell, 0.46 * cell, n, 1, 1), uniform(0.22 * cell, 0.46 * cell, n, 1, 1)
        row, col = (cells[:, slot] // 2).view(n, 1, 1), (cells[:, slot] % 2).view(n, 1, 1)
        cy = row * cell + ry + uniform(0, 1, n, 1, 1) * (cell - 2 * ry)  # wholly inside its cell
        cx = col * cell + rx + uniform(0, 1, n, 1, 1) * (cell - 2 * rx)
        dy, dx = y - cy, x - cx
        rectangle = (dy.abs() <= ry) & (dx.abs() <= rx)
        ellipse = (dy / ry).square() + (dx / rx).square() <= 1
        # Point up: half-width 0 at the apex (cy - ry), rx at the base (cy + ry).
        triangle = (dy.abs() <= ry) & (dx.abs() <= rx * (dy + ry) / (2 * ry))
        inside = torch.where(kind == 0, rectangle, torch.where(kind == 1, ellipse, triangle))
        inside &= (slot < count).view(n, 1, 1)
        images = torch.where(inside.unsqueeze(1), uniform(0.55, 1.0, n, 3, 1, 1), images)
        boxes[:, slot] = pixel_box(inside)
        labels[:, slot] = kind.view(n)
    images = (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    return images, boxes, labels, count


def pixel_box(masks: torch.Tensor) -> torch.Tensor:
    """The boxes [n, 4] (x1, y1, x2, y2, pixel edges) around each mask's pixels [n, S, S]; zeros if empty."""
    size = masks.shape[-1]
    index = torch.arange(size)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # [n, S] each: which rows / columns it covers

    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(hit, index, size).amin(dim=1), torch.where(hit, index, -1).amax(dim=1) + 1

    (x1, x2), (y1, y2) = span(cols), span(rows)
    box = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), box, torch.zeros_like(box))


class ShapeBoxes(Dataset):
    """Images held in one tensor; each sample's boxes and labels sliced to its own count."""

    def __init__(self, images, boxes, labels, count) -> None:
        self.images, self.boxes, self.labels, self.count = images, boxes, labels, count.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        n = self.count[i]
        return self.images[i], {"boxes": self.boxes[i, :n], "labels": self.labels[i, :n]}


def boxes(
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int,
    max_shapes: int,
    seed: int,
    mean: list[float],
    std: list[float],
    noise: float = 0.1,
) -> Splits:
    """Train, val and test drawn one after another from one generator seeded with `seed`."""
    if image_size < 16 or not 1 <= max_shapes <= 4 or min(num_train, num_val, num_test) < 1:
        raise DatasetError(
            f"boxes needs image_size >= 16, 1 <= max_shapes <= 4 (one shape a cell of a 2 x 2 grid) and at "
            f"least one image a split, got image_size={image_size}, max_shapes={max_shapes}, sizes "
            f"{num_train}/{num_val}/{num_test}"
        )
    generator = torch.Generator().manual_seed(seed)
    mean_, std_ = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    splits = []
    for n in (num_train, num_val, num_test):
        images, boxes_, labels, count = render_boxes(n, image_size, max_shapes, generator, noise)
        splits.append(ShapeBoxes((images - mean_) / std_, boxes_, labels, count))
    return Splits(*splits)


def collate(samples: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images stacked [B, 3, S, S]; targets kept as a list of B dicts, each with its own number of boxes."""
    return torch.stack([image for image, _ in samples]), [target for _, target in samples]
