"""New inputs for a trained run (predict.py), read in the run's own terms: its stored data config says what
the model takes, and each sample is prepared as the run's val and test samples were.

    image data    a folder of images (searched recursively, in sorted order), one image file, or a .npy
                  array of pixels in [0, 1] (uint8: 0..255), [N, H, W] or [N, C, H, W]; images are
                  resized, centre-cropped, made grey or colour and normalized by data.image_size,
                  in_channels, mean and std, as data=imagefolder's test images are
    vector data   a CSV file with a header that holds the run's feature columns (data.features; other
                  columns, the target's too, are left out), standardized with the train rows' mean and std
    token data    a text file, one prompt a line (blank lines left out), its UTF-8 bytes as token ids

Every sample is named (a file's path under the folder, `line N` of a table or text, an array's row) so
that each row of the predictions says which input it is. A reader raises DatasetError, one line naming
the file, for an input it cannot read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.splits import DatasetError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


@dataclass
class Inputs:
    names: list[str]  # one a sample, in order
    read: Callable[[int], torch.Tensor]  # sample i, as the model's input for one sample
    stack: bool = True  # False: a batch is a list of samples (prompts of different lengths)

    def batches(self, size: int) -> Iterator[tuple[list[str], torch.Tensor | list[torch.Tensor]]]:
        for start in range(0, len(self.names), size):
            names = self.names[start : start + size]
            samples = [self.read(i) for i in range(start, start + len(names))]
            yield names, torch.stack(samples) if self.stack else samples


def read_inputs(data: dict, path) -> Inputs:
    """The samples at `path` for a run whose (resolved) data config is `data`."""
    declared = data.get("declares") or {}
    kind = declared.get("input", data.get("input"))  # older configs declared it beside the other keys
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise DatasetError(f"input {path} does not exist")
    if kind == "image":
        return _images(data, path)
    if kind in ("vector", "tokens") and path.is_dir():
        wanted = "a CSV file" if kind == "vector" else "a text file, one prompt a line"
        raise DatasetError(f"input {path} is a folder; this run's model reads {wanted}")
    if kind == "vector":
        return _table(data, path)
    if kind == "tokens":
        return _prompts(data, path)
    raise DatasetError(
        f"predict.py reads image, vector and tokens inputs, and this run's data declares input={kind!r}: "
        "add its reader to data/inputs.py"
    )


def _images(data: dict, path: Path) -> Inputs:
    size, channels = int(data["image_size"]), int(data["in_channels"])
    mean, std = list(data["mean"]), list(data["std"])
    if path.suffix.lower() == ".npy":
        return _array(path, channels, size, mean, std)
    from data.transforms import eval_transform

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DatasetError(f"input {path} holds no images ({', '.join(IMAGE_SUFFIXES)}), in it or below")
        names = [p.relative_to(path).as_posix() for p in files]
    else:
        files, names = [path], [path.name]
    transform = eval_transform(size, channels, mean, std)
    return Inputs(names, lambda i: transform(_open_image(files[i])))


def _open_image(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # as ImageFolder's loader: the transform makes it grey if need be
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"input {path} cannot be read as an image ({err})") from None


def _array(path: Path, channels: int, size: int, mean: list[float], std: list[float]) -> Inputs:
    try:
        pixels = np.load(path, allow_pickle=False)  # never pickled objects: they could run code
    except (OSError, ValueError) as err:
        raise DatasetError(f"input {path} cannot be read as a .npy array ({err})") from None
    shape = list(pixels.shape)
    if pixels.ndim == 3 and channels == 1:
        pixels = pixels[:, None]
    expected = (channels, size, size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected or not len(pixels):
        grey = f" or [N, {size}, {size}]" if channels == 1 else ""
        raise DatasetError(
            f"input {path} holds an array of shape {shape}; this run's model takes "
            f"[N, {channels}, {size}, {size}]{grey}, pixels in [0, 1]"
        )
    x = torch.from_numpy(pixels)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    # As data/digits.py and data/shapes.py normalize their in-memory images, op for op.
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return Inputs([f"row {i}" for i in range(len(x))], x.__getitem__)


def _table(data: dict, path: Path) -> Inputs:
    features, mean, std = data.get("features"), data.get("feature_mean"), data.get("feature_std")
    if not features or mean is None or std is None:
        raise DatasetError(
            "this run's checkpoint holds no feature columns and their standardization (data.features, "
            "feature_mean, feature_std): it was trained by an older version; train it again to predict"
        )
    delimiter = (data.get("dataset") or {}).get("delimiter", ",")
    lines, columns = _read_table(path, delimiter, [str(f) for f in features])
    x = torch.from_numpy(np.stack(columns, axis=1))
    # In float64, then float32, as data/csv.py standardizes its rows.
    x = ((x - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)).float()
    return Inputs([f"line {n}" for n in lines], x.__getitem__)


def _read_table(path: Path, delimiter: str, features: list[str]) -> tuple[list[int], list[np.ndarray]]:
    """Each row's line number and the feature columns' values (float64), by the header's names. Its own
    reader, not data/csv.py's: a project may keep data=diabetes without data=csv."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's byte-order mark
            reader = csv.reader(f, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            table = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"input {path} cannot be read as a CSV table ({err})") from None
    missing = [name for name in features if name not in header]
    if missing:
        raise DatasetError(
            f"input {path} has no column {', '.join(map(repr, missing))} (a feature column the run was "
            f"trained on); its columns: {', '.join(header)}"
        )
    if not table:
        raise DatasetError(f"input {path} has a header but no rows")
    columns = []
    for name in features:
        at = header.index(name)
        values = []
        for line, cells in table:
            cell = cells[at].strip() if at < len(cells) else ""
            try:
                values.append(float(cell))
            except ValueError:
                values.append(math.nan)
            if not math.isfinite(values[-1]):
                raise DatasetError(f"input {path} line {line}, column {name!r}: {cell!r} is not a number")
        columns.append(np.asarray(values, dtype=np.float64))
    return [line for line, _ in table], columns


def _prompts(data: dict, path: Path) -> Inputs:
    try:
        text = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"input {path} cannot be read ({err.strerror})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DatasetError(f"input {path} holds no prompt (one a line, blank lines left out)")
    vocab = int(data.get("vocab_size") or data["num_outputs"])
    prompts = [torch.tensor(list(line), dtype=torch.long) for _, line in lines]
    for (n, _), tokens in zip(lines, prompts, strict=True):
        if int(tokens.max()) >= vocab:
            raise DatasetError(
                f"input {path} line {n} holds byte {int(tokens.max())}, outside this run's {vocab} token ids"
            )
    return Inputs([f"line {n}" for n, _ in lines], prompts.__getitem__, stack=False)
