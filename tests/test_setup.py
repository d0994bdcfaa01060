"""README's set-up as a new user meets it: `make test` with the default extras, on a fresh machine."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.helpers import PYTHON, REPO, require_extra


def test_a_missing_extra_of_a_namespace_package_skips(monkeypatch):
    """find_spec raises on a dotted name whose parent is missing (hydra_plugins without the sweep extra):
    the test that needs it must skip, not error."""
    monkeypatch.delenv("REQUIRE_E2E", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_parent_pkg.plugin is missing"):
        require_extra("no_such_parent_pkg.plugin", "sweep")


def test_a_missing_extra_fails_under_require_e2e(monkeypatch):
    monkeypatch.setenv("REQUIRE_E2E", "1")
    with pytest.raises(pytest.fail.Exception, match=r"pip install -e '\.\[sweep\]'"):
        require_extra("no_such_parent_pkg.plugin", "sweep")


@pytest.mark.needs(".ci/run")
def test_ci_runs_readmes_make_test_with_the_default_extras_first():
    """CI must see what a new user sees: plain `make test` (no EXTRAS, no REQUIRE_E2E) before the run with
    every extra, or an extra's missing import hides behind CI's own installs."""
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    # `timed SECONDS "NAME" COMMAND...` (.ci/run's budget wrapper) runs COMMAND.
    commands = [re.sub(r'^timed \d+ "[^"]*" ', "", ln) for ln in lines if ln and not ln.startswith("#")]
    assert "make test" in commands, "CI must run README's `make test` as typed"
    plain = commands.index("make test")
    assert not any("REQUIRE_E2E" in c for c in commands[:plain])
    extended = [i for i, c in enumerate(commands) if c.startswith("make test EXTRAS=")]
    assert extended and extended[0] > plain
    # The whole suite once: the slow tests that README's `make test` leaves out come after it.
    assert commands.index("make test TEST_MARKS=slow") > plain
    assert all("--last-skipped" in commands[i] for i in extended)
    assert "make test" in (REPO / "README.md").read_text()


SKIPS_WITHOUT_IT = """
import os
import pytest


def test_runs_anywhere():
    pass


@pytest.mark.skipif(os.environ.get("HAVE_IT") != "1", reason="needs it")
def test_needs_it():
    pass
"""


def test_last_skipped_runs_the_tests_that_skipped_and_nothing_else(tmp_path):
    """CI's pass with every extra runs what the passes before it skipped (tests/conftest.py), read from
    pytest's cache; once they have run, nothing is left, and that is no failure."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_addoption, pytest_collection_modifyitems, "
        "pytest_runtest_logreport, pytest_sessionfinish  # noqa: F401\n"
    )
    (tmp_path / "test_it.py").write_text(SKIPS_WITHOUT_IT)

    def pytest_(*args: str, have_it: bool) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), "HAVE_IT": "1" if have_it else "0",
               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # fmt: skip
        cmd = [PYTHON, "-m", "pytest", "-rA", "-q", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    first = pytest_(have_it=False)
    assert first.returncode == 0 and "1 passed, 1 skipped" in first.stdout, first.stdout + first.stderr
    again = pytest_("--last-skipped", have_it=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "PASSED test_it.py::test_needs_it" in again.stdout and "test_runs_anywhere" not in again.stdout
    assert "1 passed, 1 deselected" in again.stdout, again.stdout
    done = pytest_("--last-skipped", have_it=True)
    assert done.returncode == 0 and "2 deselected" in done.stdout, done.stdout + done.stderr
