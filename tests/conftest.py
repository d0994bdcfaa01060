import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Two cores: keep each test's torch to one thread so parallel helpers and subprocesses don't thrash.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


# The tests whose last run skipped (an extra, a system component or root missing), kept in pytest's cache as
# its lastfailed is: CI runs README's `make test` with the default extras, then `--last-skipped` with every
# extra runs those alone (.ci/run).
SKIPPED_KEY = "template/last-skipped"


def pytest_addoption(parser):
    parser.addoption("--last-skipped", action="store_true", help="run only the tests whose last run skipped")


_outcomes: dict[str, bool] = {}  # a test's id: whether it skipped (else it ran), in this session


def pytest_runtest_logreport(report):
    if report.skipped:
        _outcomes[report.nodeid] = True
    elif report.when == "call":
        _outcomes[report.nodeid] = False


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if config.getoption("--last-skipped") and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # nothing skipped last time: nothing left to run
    if getattr(config, "cache", None) is None or hasattr(config, "workerinput"):
        return  # under xdist the workers' reports reach the controller, which alone writes
    skipped = set(config.cache.get(SKIPPED_KEY, []))
    skipped |= {nodeid for nodeid, skip in _outcomes.items() if skip}
    skipped -= {nodeid for nodeid, skip in _outcomes.items() if not skip}
    config.cache.set(SKIPPED_KEY, sorted(skipped))


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
    if config.getoption("--last-skipped"):
        wanted = set(config.cache.get(SKIPPED_KEY, []))
        absent += [item for item in items if item.nodeid not in wanted]
    if absent:
        config.hook.pytest_deselected(items=absent)
        absent_ids = {id(item) for item in absent}
        items[:] = [item for item in items if id(item) not in absent_ids]
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
