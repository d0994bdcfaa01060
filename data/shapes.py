"""Synthetic shapes for segmentation, drawn from the seed in memory: bright circles, squares and
triangles on a dark noisy background, with a per-pixel class mask (0 background, 1 circle, 2 square,
3 triangle). No download, the same images on any machine for the same seed."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from data.splits import DatasetError, Splits

CLASSES = ("background", "circle", "square", "triangle")


def render_shapes(
    n: int, image_size: int, max_shapes: int, generator: torch.Generator, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """n images, float [n, 3, S, S] in [0, 1], and their masks, long [n, S, S]. Each image holds 1 to
    max_shapes shapes of random kind, size, place and colour; a later shape covers an earlier one, and the
    mask shows what is visible. All images are drawn at once, one shape slot at a time."""
    size = image_size

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    background = uniform(0.0, 0.35, n, 3, 1, 1)
    images = background.expand(n, 3, size, size).clone()
    masks = torch.zeros(n, size, size, dtype=torch.long)
    count = torch.randint(1, max_shapes + 1, (n,), generator=generator)
    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    for slot in range(max_shapes):
        kind = torch.randint(1, len(CLASSES), (n, 1, 1), generator=generator)
        radius = uniform(0.12 * size, 0.25 * size, n, 1, 1)
        cy, cx = uniform(0, 1, n, 1, 1), uniform(0, 1, n, 1, 1)
        cy, cx = radius + cy * (size - 2 * radius), radius + cx * (size - 2 * radius)  # wholly inside
        colour = uniform(0.55, 1.0, n, 3, 1, 1)
        dy, dx = y - cy, x - cx
        circle = dy.square() + dx.square() <= radius.square()
        half = 0.85 * radius  # a square of about a circle's area
        square = (dy.abs() <= half) & (dx.abs() <= half)
        # Point up: half-width 0 at the apex (cy - r), r at the base (cy + r).
        triangle = (dy.abs() <= radius) & (dx.abs() <= (dy + radius) / 2)
        inside = torch.where(kind == 1, circle, torch.where(kind == 2, square, triangle))
        inside &= (slot < count).view(n, 1, 1)
        masks = torch.where(inside, kind, masks)
        images = torch.where(inside.unsqueeze(1), colour, images)
    images = (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    return images, masks


def shapes(
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
    if image_size < 8 or max_shapes < 1 or min(num_train, num_val, num_test) < 1:
        raise DatasetError(
            f"shapes needs image_size >= 8, max_shapes >= 1 and at least one image a split, got "
            f"image_size={image_size}, max_shapes={max_shapes}, sizes {num_train}/{num_val}/{num_test}"
        )
    generator = torch.Generator().manual_seed(seed)
    mean_, std_ = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    splits = []
    for n in (num_train, num_val, num_test):
        images, masks = render_shapes(n, image_size, max_shapes, generator, noise)
        # TensorDataset tells the loaders to slice whole batches by index, with no per-sample Python work.
        splits.append(TensorDataset((images - mean_) / std_, masks))
    return Splits(*splits)
