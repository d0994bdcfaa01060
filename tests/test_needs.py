"""conftest.py leaves out a test whose `needs` files are absent: every `needs` mark counts, the stacked ones
too (a module's `pytestmark` and a test's own, or two on one test), not only the closest."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.helpers import REPO

STACKED = """
import pytest

pytestmark = pytest.mark.needs("conf/absent.yaml")


@pytest.mark.needs("tests/test_stacked.py")
def test_module_mark_and_own_mark():
    pass


@pytest.mark.needs("conf/absent.yaml")
@pytest.mark.needs("tests/test_stacked.py")
def test_two_marks():
    pass
"""


def test_every_stacked_needs_mark_counts(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_stacked.py").write_text(STACKED)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    needs: files\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "test_module_mark_and_own_mark" not in proc.stdout and "test_two_marks" not in proc.stdout, (
        proc.stdout
    )
    assert "2 deselected" in proc.stdout, proc.stdout
