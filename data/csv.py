"""Your own table: a CSV file, one row a sample, numeric feature columns in and one target column out, held
in memory as tensors. Read with the standard library's csv module and numpy (no pandas).

What the file alone knows comes back in `Splits.found`, for the model and the task configs: the number of
features (`input_shape`), whether the target is a class or a real (`target`), the classes and their names,
and a real target's train mean and std.

The target is a class when any of its cells is not a number (text labels, true/false), or when all are
whole numbers with at most `max_classes` distinct values; otherwise it is a real (regression).
`target_kind` (class or real) decides instead. Class ids follow the sorted labels (numbers by value, text
alphabetically), so the same file gives the same ids on any machine.
"""

from __future__ import annotations

import csv as csvfile  # the standard library's; `csv` below is this dataset
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from data.splits import DatasetError, Splits, split_indices


def csv(
    path: str,
    target_column: str,
    features: list[str] | None,
    target_kind: str | None,
    max_classes: int,
    delimiter: str,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
) -> Splits:
    """Train, val and test rows drawn by seed; features standardized with the train rows' mean and
    (population) std, and a real target too (its mean and std are found, so the regression task reports
    in the target's own units). Class targets are int64 ids [N]; real targets float [N, 1]."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    # A column named 5 comes from the command line as the number 5.
    target_column = str(target_column)
    features = None if features is None else [str(name) for name in features]
    header, lines, rows = _read(path, delimiter)
    if target_kind not in (None, "class", "real"):
        raise DatasetError(f"csv: data.target_kind={target_kind!r} must be class, real or null (found)")
    where = f"csv: {path}"
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    chosen, x = _features(columns, lines, where, target_column, features)
    y, kind, class_names = _target(
        columns[target_column], lines, where, target_column, target_kind, max_classes
    )

    val, test, train = split_indices(len(rows), [val_fraction, test_fraction], split_seed)
    if min(len(train), len(val), len(test)) < 1:
        raise DatasetError(
            f"{where} has {len(rows)} rows: too few for a train, val and test split "
            f"(data.dataset.val_fraction={val_fraction}, test_fraction={test_fraction})"
        )
    mean, std = x[train].mean(dim=0), x[train].std(dim=0, correction=0).clamp(min=1e-12)
    x = ((x - mean) / std).float()  # a constant column becomes zeros, not NaN
    found = {
        "declares": {"target": kind},  # what the task must read: class or real
        "input_shape": [len(chosen)],
        "features": chosen,
        "feature_mean": mean.tolist(),  # what predict.py standardizes a new table's rows with
        "feature_std": std.tolist(),
        "num_classes": len(class_names) if kind == "class" else None,
        "class_names": class_names,
        "num_targets": 1 if kind == "real" else None,
        "num_outputs": len(class_names) if kind == "class" else 1,
        "target_mean": None,
        "target_std": None,
    }
    if kind == "real":
        y_mean, y_std = float(y[train].mean()), float(y[train].std(correction=0)) or 1.0
        y = ((y - y_mean) / y_std).float().unsqueeze(1)  # [N, 1]: the shape of the model's output
        found |= {"target_mean": y_mean, "target_std": y_std}
    # TensorDataset tells the loaders to slice whole batches by index, with no per-sample Python work.
    return Splits(*(TensorDataset(x[i], y[i]) for i in (train, val, test)), found=found)


def _features(columns: dict, lines: list[int], where: str, target_column: str, features: list[str] | None):
    """The feature columns' names and their values [N, F] (float64): those listed, or every column but the
    target that holds numbers (columns of text only are left out)."""
    header = list(columns)
    _require_columns(where, header, [target_column, *(features or [])], "data.target / data.features")
    if features is not None and target_column in features:
        raise DatasetError(f"{where}: the target column {target_column!r} is also in data.features")
    names = features if features is not None else [c for c in header if c != target_column]
    chosen, matrix = [], []
    for name in names:
        values = _numbers(columns[name], lines, where, name, skip_text=features is None)
        if values is not None:
            chosen.append(name)
            matrix.append(values)
    if not chosen:
        raise DatasetError(
            f"{where}: no column but the target {target_column!r} holds numbers "
            f"(columns: {', '.join(header)})"
        )
    return chosen, torch.from_numpy(np.stack(matrix, axis=1))


def _read(path: str, delimiter: str) -> tuple[list[str], list[int], list[list[str]]]:
    """The header, each row's line number in the file (for the messages) and its cells, blank lines left
    out. utf-8-sig: a file saved by Excel starts with a byte-order mark."""
    if not os.path.isfile(path):
        raise DatasetError(f"csv: {path} does not exist or is not a file (data.path)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csvfile.reader(f, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise DatasetError(f"csv: {path} is empty: its first line must name the columns")
        if len(set(header)) < len(header):
            twice = sorted({n for n in header if header.count(n) > 1})
            raise DatasetError(f"csv: {path} names a column more than once: {', '.join(twice)}")
        lines, rows = [], []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DatasetError(
                    f"csv: {path} line {reader.line_num} has {len(cells)} cells, the header {len(header)} "
                    f"(data.dataset.delimiter={delimiter!r})"
                )
            lines.append(reader.line_num)
            rows.append([c.strip() for c in cells])
    if not rows:
        raise DatasetError(f"csv: {path} has a header but no rows")
    return header, lines, rows


def _require_columns(where: str, header: list[str], wanted: list[str], keys: str) -> None:
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DatasetError(
            f"{where} has no column {', '.join(repr(m) for m in missing)} ({keys}); its columns: "
            f"{', '.join(header)}"
        )


def _numbers(cells: list[str], lines: list[int], where: str, name: str, skip_text: bool = False):
    """The column as float64, or None for a column of text only when `skip_text` (found features leave it
    out). A cell that is not a finite number fails, naming its line and column."""
    try:
        values = np.asarray(cells, dtype=np.float64)  # parsed in C: no Python work per cell
        bad = np.flatnonzero(~np.isfinite(values))
    except ValueError:
        parsed = [_number(c) for c in cells]
        if skip_text and all(v is None for v in parsed):
            return None
        bad = [i for i, v in enumerate(parsed) if v is None]
    if len(bad):
        i = int(bad[0])
        raise DatasetError(
            f"{where} line {lines[i]}, column {name!r}: {cells[i]!r} is not a number (a feature column "
            "holds finite numbers only; fill or drop the row, or leave the column out with data.features)"
        )
    return values


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _target(cells, lines, where: str, name: str, kind: str | None, max_classes: int):
    """The target as class ids (int64, ids in the order of the sorted labels) or reals (float64), its kind,
    and the class names (None for a real)."""
    empty = [i for i, c in enumerate(cells) if not c]
    if empty:
        raise DatasetError(f"{where} line {lines[empty[0]]}: the target column {name!r} is empty there")
    parsed = [_number(c) for c in cells]
    numeric = all(v is not None for v in parsed)
    if kind == "real" or (kind is None and numeric and not _few_whole(parsed, max_classes)):
        if not numeric:
            i = parsed.index(None)
            raise DatasetError(
                f"{where} line {lines[i]}, column {name!r}: {cells[i]!r} is not a number, and a real "
                "target (data.target_kind=real) needs numbers"
            )
        return torch.tensor(parsed, dtype=torch.float64), "real", None
    labels = sorted(set(parsed)) if numeric else sorted(set(cells))
    if len(labels) < 2:
        raise DatasetError(f"{where}: the target column {name!r} holds one class only ({cells[0]!r})")
    ids = {label: i for i, label in enumerate(labels)}
    y = torch.tensor([ids[v] for v in (parsed if numeric else cells)], dtype=torch.long)
    names = [f"{v:g}" for v in labels] if numeric else labels
    return y, "class", names


def _few_whole(values: list[float], max_classes: int) -> bool:
    """Whole numbers with at most max_classes distinct values: class labels (0/1, 1..5), not a measurement."""
    return all(v.is_integer() for v in values) and len(set(values)) <= max_classes


def write_example(directory) -> list[str]:
    """A small table in this format (the tests train on it): 240 rows of four numeric features, a text
    column (`id`, left out: not numbers) and a yes/no `label` that a linear model separates. Returns the
    config overrides that point data=csv at it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4))
    label = np.where(x[:, 0] - x[:, 2] > 0, "yes", "no")
    path = Path(directory) / "table.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csvfile.writer(f)
        out.writerow(["id", "a", "b", "c", "d", "label"])
        for i, (row, y) in enumerate(zip(x, label, strict=True)):
            out.writerow([f"row{i}", *(f"{v:.4f}" for v in row), y])
    return [f"data.path='{path}'", "data.target=label"]
