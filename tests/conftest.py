import os

import pytest


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Two cores: keep each test's torch to one thread so parallel helpers and subprocesses don't thrash.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
