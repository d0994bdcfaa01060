"""scikit-learn's bundled tables (digits, diabetes), read from the files it ships without importing it.

`import sklearn` pulls in SciPy and takes about 0.8 s, more than a default run's training; the tables
themselves are small gzip'd CSV files inside the package, which NumPy reads in a tenth of that. Where the
file is not where scikit-learn keeps it (another layout in a later release), its own loader reads it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def sklearn_file(name: str) -> Path | None:
    """The path of one of scikit-learn's bundled data files, found without importing the package."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


def digits_table() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits: images [N, 8, 8] with pixels 0..16, and labels [N] (load_digits' own)."""
    path = sklearn_file("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    table = np.loadtxt(path, delimiter=",")  # a row: 64 pixels, then the label, as load_digits reads it
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


# load_diabetes's feature_names, which scikit-learn too keeps in its code, not in the data files.
DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def diabetes_table() -> tuple[np.ndarray, np.ndarray]:
    """The 442 patients' 10 raw (unscaled) features and their target, as load_diabetes(scaled=False)."""
    data, target = sklearn_file("diabetes_data_raw.csv.gz"), sklearn_file("diabetes_target.csv.gz")
    if data is None or target is None:
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes(scaled=False)
        return bunch.data, bunch.target
    return np.loadtxt(data), np.loadtxt(target)
