"""Pictures for TensorBoard's IMAGES tab, made with torch alone (no matplotlib): the input batch as a grid,
a colormap for masks and maps, confusion matrices and per-class accuracy with their numbers stamped in a
built-in digit font, all as [3, H, W] uint8 tensors, written as PNG (add_png) or by a task's log_pictures.
"""

from __future__ import annotations

import io
import logging
import math

import torch

from board.writer import add_scalars

log = logging.getLogger(__name__)

_VIRIDIS = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32
)
# A 3x5 pixel font for the digits of class indices on the axes.
_DIGITS = (
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001001001001",
    "111101111101111",
    "111101111001111",
)


# --- Images -----------------------------------------------------------------------------------------------


def input_image_grid(x: torch.Tensor, mean=None, std=None, max_images: int = 32, min_size: int = 32):
    """A grid of the first images of a normalized batch, back in [0, 1] pixel units, float [3, H, W] on CPU:
    8 a row, 2 px black padding. Small images (8x8 digits) are enlarged by an integer factor, nearest
    neighbour, so pixels stay sharp. Plain torch: torchvision's make_grid would cost its import (~1 s)."""
    x = x[:max_images].detach().float().cpu()
    if mean is not None and std is not None:
        mean = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape[1] in (1, x.shape[1]) and std.shape[1] in (1, x.shape[1]):
            x = x * std + mean
    if x.shape[1] != 3:
        x = x[:, :1].expand(-1, 3, -1, -1)  # grey, or other band counts: the first channel, as grey
    scale = max(1, math.ceil(min_size / max(x.shape[-2:])))
    x = x.clamp(0, 1).repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    n, _, h, w = x.shape
    cols, pad = min(n, 8), 2
    rows = math.ceil(n / cols)
    grid = torch.zeros(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for k in range(n):
        top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def log_input_images(writer, x: torch.Tensor, data_cfg, step: int) -> bool:
    """IMAGES tab: a grid of the first batch as the model sees it, denormalized with data.mean / data.std."""
    if writer is None:
        return False
    if x.dim() != 4:
        log.info("Input images not logged: the batch is %d-d, not [N, C, H, W].", x.dim())
        return False
    mean, std = data_cfg.get("mean"), data_cfg.get("std")  # absent from a forker's data config: as is
    writer.add_image("inputs/train_batch", input_image_grid(x, mean, std), step)
    return True


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (any shape S) to viridis colours, uint8 of shape [3, *S]."""
    pos = values.float().clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - low).unsqueeze(-1)
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    return rgb.round().to(torch.uint8).movedim(-1, 0)


def _text_mask(text: str, scale: int) -> torch.Tensor:
    """Bool [5*scale, (4*len-1)*scale] mask of a string of digits in the 3x5 font."""
    glyphs = []
    for ch in text:
        glyph = torch.tensor([int(b) for b in _DIGITS[int(ch)]], dtype=torch.bool).view(5, 3)
        glyphs += [glyph, torch.zeros(5, 1, dtype=torch.bool)]
    mask = torch.cat(glyphs[:-1], dim=1)
    return mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def _stamp(image: torch.Tensor, text: str, top: int, left: int, height: int, width: int, scale: int):
    """Draw `text` in white, centred in the box (top, left, height, width) of a [3, H, W] uint8 image."""
    mask = _text_mask(text, scale)
    h, w = mask.shape
    if h > height or w > width:
        return
    y, x = top + (height - h) // 2, left + (width - w) // 2
    image[:, y : y + h, x : x + w][:, mask] = 255


def _cell_size(num_classes: int) -> int:
    # About 480 px across, 48 px cells at most; one pixel a class past 480 classes.
    return max(1, min(48, 480 // max(num_classes, 1)))


def _label_margins(num_classes: int, cell: int) -> tuple[int, int, int]:
    """Font scale, left margin (widest index) and top margin (one glyph high); no labels in small cells."""
    if cell < 10:
        return 1, 0, 0
    scale = max(1, cell // 10)
    return scale, (4 * len(str(num_classes - 1)) - 1) * scale + 4, 5 * scale + 4


def confusion_matrix_image(confusion: torch.Tensor) -> torch.Tensor:
    """[3, H, W] uint8: rows are true classes, columns predictions, colour is the row-normalized share
    (the diagonal is per-class recall). Class indices are drawn on the left and top when cells allow."""
    cm = confusion.detach().cpu().double()
    c = cm.shape[0]
    share = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    cell = _cell_size(c)
    grid = colormap(share).repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    if cell >= 8:  # a dark line between cells
        grid[:, cell - 1 :: cell, :] = 0
        grid[:, :, cell - 1 :: cell] = 0
    scale, left, top = _label_margins(c, cell)
    image = torch.zeros(3, top + c * cell, left + c * cell, dtype=torch.uint8)
    image[:, top:, left:] = grid
    if left:
        for k in range(c):
            _stamp(image, str(k), top + k * cell, 0, cell, left, scale)  # true class, on the left
            _stamp(image, str(k), 0, left + k * cell, top, cell, scale)  # predicted class, on top
    return image


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Share of each true class predicted right; NaN for a class absent from the split."""
    cm = confusion.detach().cpu().double()
    return cm.diagonal() / cm.sum(dim=1).where(cm.sum(dim=1) > 0, torch.tensor(float("nan")))


def per_class_accuracy_image(accuracy: torch.Tensor, width: int = 320) -> torch.Tensor:
    """[3, H, W] uint8 horizontal bars on a grey track, one per class (class 0 on top); length and colour
    show the accuracy. A class absent from the split (NaN) has an empty row, without a track."""
    c = accuracy.numel()
    row = min(24, _cell_size(c))
    scale, left, _ = _label_margins(c, row)
    image = torch.zeros(3, c * row, left + width, dtype=torch.uint8)
    gap = max(1, row // 8)
    for k, acc in enumerate(accuracy.tolist()):
        top = k * row
        if left:
            _stamp(image, str(k), top, 0, row, left, scale)
        if math.isnan(acc):
            continue
        bar = image[:, top + gap : top + row - gap, left:]
        bar[:] = 48
        bar[:, :, : round(acc * width)] = colormap(torch.tensor(acc)).view(3, 1, 1)
    return image


def add_png(writer, tag: str, image: torch.Tensor, step: int) -> None:
    """writer.add_image for a finished uint8 [3, H, W] image, encoded straight to PNG. add_image first
    converts to float and back and resizes to the same size (LANCZOS): 7 ms for the 10-class confusion
    matrix at every validation, where this takes 3 ms. Written like the HPARAMS summaries, through
    writer.file_writer."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    channels, height, width = image.shape
    buffer = io.BytesIO()
    # zlib level 1: half the encoding time of the default 6, for files of a few kB either way.
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG", compress_level=1)
    png = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()
    )
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=png)]), step)


def log_per_class(writer, confusion: torch.Tensor, step: int, prefix: str = "val") -> None:
    """IMAGES tab: the confusion matrix and a per-class accuracy bar chart. SCALARS tab: one accuracy curve
    per class under `<prefix>_class_acc/`, named by zero-padded index so that they sort in class order."""
    if writer is None:
        return
    accuracy = per_class_accuracy(confusion)
    add_png(writer, f"{prefix}/confusion_matrix", confusion_matrix_image(confusion), step)
    add_png(writer, f"{prefix}/per_class_accuracy", per_class_accuracy_image(accuracy), step)
    width = len(str(len(accuracy) - 1))
    curves = {f"{k:0{width}d}": acc for k, acc in enumerate(accuracy.tolist()) if not math.isnan(acc)}
    add_scalars(writer, curves, step, f"{prefix}_class_acc")
