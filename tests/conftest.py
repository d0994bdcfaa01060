import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Two cores: keep each test's torch to one thread so parallel helpers and subprocesses don't thrash.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


def pytest_collection_modifyitems(config, items):
    """A project without a part has no test of it, not a skipped one: a test marked `needs(paths)` (see
    tests/helpers.py) whose files are not all there, and a parametrized test whose cases come from the
    files on disk and found none (pytest would skip it as an empty parameter set), are not collected.
    So a project generated with fewer tasks, models or tools (copier.yml), or a fork that deleted some,
    runs exactly the tests of what it has."""
    absent = []
    for item in items:
        # Every `needs` mark, the stacked ones too (a module's and a test's, or two on one test).
        needed = [path for mark in item.iter_markers("needs") for path in mark.args]
        missing = not all((REPO / path).exists() for path in needed)
        empty = any(
            str(mark.kwargs.get("reason", "")).startswith("got empty parameter set")
            for mark in item.iter_markers("skip")
        )
        if missing or empty:
            absent.append(item)
    if absent:
        config.hook.pytest_deselected(items=absent)
        items[:] = [item for item in items if item not in absent]
    for item in items:
        _skip_without_its_extra(item)


def _skip_without_its_extra(item) -> None:
    """A case of a model that declares an optional extra (`declares.model.extra: timm`) skips where the
    extra is not installed, as a test calling require_extra does (and fails under REQUIRE_E2E=1): the cases
    come from conf/ on disk, so no test can call it for them."""
    import importlib.util

    from tests.helpers import declared

    model = getattr(getattr(item, "callspec", None), "params", {}).get("model")
    known = isinstance(model, str) and (REPO / "conf" / "model" / f"{model}.yaml").is_file()
    extra = declared("model", model).get("extra") if known else None
    if extra:  # CI's run with every extra selects these by the mark (`-m extra`, .ci/run)
        item.add_marker(pytest.mark.extra)
    if not extra or os.environ.get("REQUIRE_E2E") == "1":
        return  # under REQUIRE_E2E=1 it runs, and fails in one line naming the extra
    try:  # a dotted name whose parent package is missing raises instead of returning None
        if importlib.util.find_spec(extra) is not None:
            return
    except ModuleNotFoundError:
        pass
    item.add_marker(pytest.mark.skip(reason=f"model={model} needs {extra}: pip install -e '.[{extra}]'"))
