"""README's set-up as a new user meets it: `make test` with the default extras, on a fresh machine."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO, require_extra


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
    assert "make test" in (REPO / "README.md").read_text()
