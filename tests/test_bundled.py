"""scikit-learn's bundled tables, read from its files without importing it (data/bundled.py): the same
numbers as its own loaders."""

from __future__ import annotations

import numpy as np

from tests.helpers import REFERENCE_RUN


def test_the_bundled_tables_are_sklearns_own():
    from sklearn.datasets import load_diabetes, load_digits

    from data.bundled import DIABETES_FEATURES, diabetes_table, digits_table

    images, labels = digits_table()
    bunch = load_digits()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, bunch.images)
    assert labels.dtype == np.int64 and np.array_equal(labels, bunch.target)
    features, target = diabetes_table()
    bunch = load_diabetes(scaled=False)
    assert np.array_equal(features, bunch.data) and np.array_equal(target, bunch.target)
    assert list(DIABETES_FEATURES) == list(bunch.feature_names)


@REFERENCE_RUN  # another default run may need SciPy itself (detection's mAP)
def test_a_default_run_does_not_import_sklearn(tmp_path):
    """Importing scikit-learn (and SciPy with it) would cost more than the default run's training."""
    import subprocess

    from tests.helpers import FAST, PYTHON, REPO

    proc = subprocess.run([PYTHON, "-X", "importtime", str(REPO / "train.py"), *FAST, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line
    }
    assert "torch" in imported and not {m for m in imported if m.split(".")[0] in ("sklearn", "scipy")}
