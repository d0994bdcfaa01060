"""system/lock.py: exactly one holder of a run directory, whatever the timing; a killed holder's lock is
free at once. Real processes racing behind a barrier, a real kill -9."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import textwrap

import pytest

from setup.config import ConfigError
from system.lock import RunLock
from tests.helpers import PYTHON, REPO, wait_for_line

WORKERS, ROUNDS = 4, 150


def contend(run_dir: str, start, tried, results) -> None:
    """One contender: each round, take the lock at the same moment as the others, hold it until every one
    has tried, then let it go."""
    for _ in range(ROUNDS):
        start.wait()
        lock = RunLock(run_dir)
        try:
            lock.acquire()
            results.put(os.getpid())
        except ConfigError:
            results.put(None)
        tried.wait()
        lock.release()


@pytest.mark.slow
def test_processes_racing_for_the_lock_get_exactly_one_holder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, tried = ctx.Barrier(WORKERS + 1), ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=contend, args=(str(tmp_path), start, tried, results)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    lock = tmp_path / ".lock"
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    holders = []
    try:
        for i in range(ROUNDS):
            # Three starting points: no lock file, a stale one (its process gone), an empty one (a holder
            # killed between creating it and writing its pid).
            lock.unlink(missing_ok=True)
            if i % 3 == 1:
                lock.write_text(f"{dead.pid} {os.uname().nodename}\n")
            elif i % 3 == 2:
                lock.write_text("")
            start.wait(timeout=60)
            got = [results.get(timeout=60) for _ in range(WORKERS)]
            holders.append(sum(pid is not None for pid in got))
            tried.wait(timeout=60)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    bad = [(i, n) for i, n in enumerate(holders) if n != 1]
    assert not bad, f"rounds without exactly one holder (round, holders): {bad}"
    assert not lock.exists()  # the last holder removed it


HOLDER = textwrap.dedent(
    """
    import sys, time
    from system.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("holding", flush=True)
    time.sleep(600)
    """
)


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLDER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for_line(holder, r"^holding", timeout=60)
        with pytest.raises(
            ConfigError, match=rf"is in use by process {holder.pid} on \S+: one run at a time"
        ):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".lock").exists()  # it could not clean up ...
    with RunLock(tmp_path) as lock:  # ... and the lock is free all the same, with no wait
        assert lock.held
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()} {os.uname().nodename}\n"
    assert not (tmp_path / ".lock").exists()
