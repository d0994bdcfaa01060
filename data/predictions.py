"""What predict.py writes: one row a sample, as CSV or JSONL (by the output's suffix), whole or not at all.

A row is a task's `predict` dict with the sample's name first (`input`). Numbers and text are written as
they are; a list (detection's boxes, labels, scores) is a JSON array (in a CSV, one cell of JSON). A 2-D
integer tensor (a segmentation mask) becomes a PNG of class ids (8-bit, or 16-bit past 255) in a folder
beside the output, `<output stem>_<column>/`, named after its input; the row holds its path, relative
to the output's folder.

Images are written into a hidden folder beside the output as they come and the rows kept; at the end the
folder is renamed into place and the rows written through system/files.py's atomic_file. Any error on the
way leaves neither: no half-written predictions, and a file or folder there before is kept unless
`overwrite`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from data.splits import DatasetError
from system.errors import ConfigError
from system.files import atomic_file

FORMATS = (".csv", ".jsonl")


def check_output(path, overwrite: bool) -> Path:
    """The output file, checked before any work: a known format, and not there already unless `overwrite`."""
    path = Path(str(path)).expanduser().absolute()
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"output={path} must end in {' or '.join(FORMATS)} (the format written)")
    if path.is_dir():
        raise ConfigError(f"output={path} is a folder; name a {' or '.join(FORMATS)} file")
    if path.exists() and not overwrite:
        raise ConfigError(f"output={path} exists; pass overwrite=true to replace it")
    folder = next(p for p in path.parents if p.exists())  # the output's folder, or the nearest that is
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"output={path}: {folder} is not writable")
    return path


class Predictions:
    """`with Predictions(path, overwrite) as out: out.add(name, row)`; written when the block ends cleanly."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path, self.overwrite = path, overwrite
        self.rows: list[dict] = []
        self.staging: Path | None = None  # the images' hidden folder, made at the first image
        self.image_names: set[str] = set()

    def __enter__(self) -> Predictions:
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self._write()
        except OSError as err:  # a folder that cannot be written, a full disk: the user's to fix
            raise ConfigError(f"output={self.path} cannot be written ({err.strerror or err})") from None
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)

    def add(self, name: str, row: dict) -> None:
        out = {"input": name}
        for key, value in row.items():
            is_image = isinstance(value, torch.Tensor) and value.dim() == 2
            out[key] = self._image(name, key, value) if is_image else _plain(value)
        self.rows.append(out)

    def _image(self, name: str, column: str, image: torch.Tensor) -> str:
        from PIL import Image

        if self.staging is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.stem}.", dir=self.path.parent))
            except OSError as err:
                raise ConfigError(f"output={self.path} cannot be written ({err.strerror or err})") from None
        relative = Path(name).with_suffix(".png").as_posix()
        if relative in self.image_names:  # a.jpg and a.png: the same name once the suffix is .png
            relative = f"{Path(relative).with_suffix('').as_posix()}_{len(self.rows)}.png"
        self.image_names.add(relative)
        file = self.staging / column / relative
        pixels = image.cpu().numpy()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype("uint8" if int(pixels.max(initial=0)) < 256 else "uint16")).save(
                file
            )
        except OSError as err:
            raise ConfigError(
                f"output={self.path}: {file.name} cannot be written ({err.strerror or err})"
            ) from None
        return f"{self.path.stem}_{column}/{relative}"

    def _write(self) -> None:
        folders = []
        if self.staging is not None:
            for column in sorted(os.listdir(self.staging)):
                folder = self.path.parent / f"{self.path.stem}_{column}"
                if folder.exists() and not self.overwrite:
                    raise ConfigError(f"{folder} exists; pass overwrite=true to replace it")
                folders.append((self.staging / column, folder))
        try:
            for staged, folder in folders:
                if folder.exists():
                    shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
                os.replace(staged, folder)
            with atomic_file(self.path, "w") as f:
                (_write_jsonl if self.path.suffix.lower() == ".jsonl" else _write_csv)(self.rows, f)
        except BaseException:
            for _, folder in folders:  # the rows did not make it: their images go too
                shutil.rmtree(folder, ignore_errors=True)
            raise


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple, dict, str, int, float, bool)) or value is None:
        return value
    raise DatasetError(
        f"a prediction's value of type {type(value).__name__} cannot be written as CSV or JSON"
    )


def _write_csv(rows: list[dict], f) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))  # in the order they first come
    writer = csv.DictWriter(f, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


def _write_jsonl(rows: list[dict], f) -> None:
    for row in rows:
        f.write(json.dumps(row) + "\n")
