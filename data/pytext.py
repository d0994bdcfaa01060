"""Byte-level text from the Python standard library's own .py files, found at run time: text that is on
every machine with Python, with no download. A deterministic subset (sorted paths up to a byte cap) is
split into train / val / test by file, then cut into blocks of block_size + 1 bytes for language modeling.

The same Python version gives the same text; another version's standard library gives other text."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from data.splits import DatasetError, Splits, split_indices

# Folders left out wherever they sit: installed packages, the test suites (test/, lib2to3/tests,
# idlelib/idle_test, ...) and vendored or bundled trees.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "_bundled", "_vendor"}
)


def stdlib_root() -> Path:
    root = sysconfig.get_paths().get("stdlib")
    if not root or not Path(root, "os.py").is_file():
        raise DatasetError(
            f"pytext reads the Python standard library's .py files, but found none at {root!r} "
            "(sysconfig stdlib); pass data.dataset.root=<a folder of .py files>"
        )
    return Path(root)


def source_files(root: Path, max_bytes: int) -> list[Path]:
    """The .py files under root in sorted order of their relative paths, outside EXCLUDED_DIRS, taken
    until they hold max_bytes (the file that crosses the cap is left out)."""
    found = []  # (relative posix path, path); the excluded folders are never entered (site-packages is big)
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]
        relative = Path(folder).relative_to(root)
        found += [((relative / n).as_posix(), Path(folder, n)) for n in names if n.endswith(".py")]
    files, total = [], 0
    for _, path in sorted(found):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    return files


def split_files(
    files: list[Path], val_fraction: float, test_fraction: float, split_seed: int
) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, val, test) lists of files, split at random by file with the seed: no file is in two splits.
    Each list keeps the files' sorted order."""
    val, test, train = split_indices(len(files), [val_fraction, test_fraction], split_seed)
    return tuple([files[i] for i in sorted(part.tolist())] for part in (train, val, test))


def blocks(files: list[Path], block_size: int) -> torch.Tensor:
    """The files' bytes, one after another, cut into rows of block_size + 1 tokens (long [N, T + 1]).
    Rows overlap by one byte, so every byte but the first is a target exactly once; the tail is dropped."""
    data = b"".join(path.read_bytes() for path in files)
    tokens = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    )
    if len(tokens) < block_size + 1:
        return torch.zeros(0, block_size + 1, dtype=torch.long)
    return tokens.unfold(0, block_size + 1, block_size).long()  # .long() copies: rows own their memory


def pytext(
    block_size: int,
    max_bytes: int,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    root: str | None = None,
) -> Splits:
    """Each split is a one-tensor TensorDataset of byte blocks: batches are `(tokens,)`, [B, T + 1]."""
    folder = Path(root) if root else stdlib_root()
    files = source_files(folder, max_bytes)
    if len(files) < 3:
        raise DatasetError(
            f"pytext needs at least 3 .py files (one a split) under {folder}, found {len(files)}"
        )
    parts = split_files(files, val_fraction, test_fraction, split_seed)
    splits = []
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        rows = blocks(part, block_size)
        if len(rows) == 0:
            raise DatasetError(
                f"pytext: the {name} split ({len(part)} files under {folder}) holds fewer than "
                f"block_size + 1 = {block_size + 1} bytes; raise max_bytes or the split's fraction"
            )
        splits.append(TensorDataset(rows))
    return Splits(*splits)
