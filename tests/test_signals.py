"""SIGINT / SIGTERM: finish the step, save last.pt, close TensorBoard, print the resume command, exit
130 / 143. A second signal exits at once. Real runs of train.py, stopped with real signals."""

import os
import signal
import subprocess

import pytest

from tests.helpers import PYTHON, REPO, event_accumulator, read_metrics, run_cli, wait_for_line
from utils.run.checkpoint import load_checkpoint

ENDLESS = [
    "trainer.max_epochs=1000",
    "data.batch_size=8",
    "logging.every_n_steps=1",
    "logging.progress_bar=false",
]


def start_until(args: list[str], line_pattern: str) -> tuple[subprocess.Popen, list[str]]:
    """Start train.py and read its output until a line matches (the loop is then running, and its handlers
    installed), with a bound: a run that hangs fails the test instead of blocking it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        return proc, [wait_for_line(proc, line_pattern)]
    except AssertionError:
        proc.kill()
        raise


@pytest.mark.parametrize(
    "signum, code",
    [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],  # SIGINT also resumes
)
def test_stop_signal_saves_closes_and_prints_the_resume_command(tmp_path, signum, code):
    run = tmp_path / "run"
    proc, lines = start_until([*ENDLESS, f"hydra.run.dir={run}"], r"step 30/")
    proc.send_signal(signum)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out
    assert f"Resume with: python train.py resume={run}" in out
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    stopped = state["step"]
    assert stopped >= 30 and state["epoch"] == 0 and state["batch_in_epoch"] == stopped  # mid-epoch
    # Every step up to the stop is in TensorBoard: the writer was flushed and closed, nothing lost.
    assert [e.step for e in event_accumulator(run).Scalars("train/loss")] == list(range(1, stopped + 1))
    if signum == signal.SIGINT:  # and the printed command goes on from there
        proc = run_cli([f"resume={run}", f"trainer.max_steps={stopped + 5}"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert read_metrics(run)["steps"] == stopped + 5


def test_second_signal_exits_at_once_without_saving(tmp_path):
    run = tmp_path / "run"
    proc, lines = start_until([*ENDLESS, f"hydra.run.dir={run}"], r"step 5/")
    # Both signals land while the process is stopped, so both are pending when it continues: the first
    # asks for a graceful stop, the second must end the process before the step is over.
    proc.send_signal(signal.SIGSTOP)
    os.waitpid(proc.pid, os.WUNTRACED)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out
    assert "SIGTERM again: exiting now, without saving" in out
    assert "Resume with" not in out
    assert not (run / "checkpoints" / "last.pt").exists()  # no epoch ended, nothing saved


LANDS_IN_A_LIBRARYS_CLEANUP = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from utils.cli import run

def main():
    state = {{"flags": object()}}
    try:
        try:
            os.kill(os.getpid(), signal.{signal})  # lands here, inside the library's work
        finally:  # the library's cleanup trips over the state the signal left half-done
            state["flags"] = None
            state["flags"].restore()
    finally:
        pass

run(main, "train.py", "train")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_librarys_cleanup_is_still_one_line(signum):
    """What CI saw once: Ctrl-C inside OmegaConf's flag_override during Hydra's compose came out as
    OmegaConf's AttributeError (the Interrupted as its context), a 40-line traceback and exit 1."""
    script = LANDS_IN_A_LIBRARYS_CLEANUP.format(repo=str(REPO), signal=signum.name)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signum, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"train.py: stopped by {signum.name} before it started: nothing to save."
    ], done.stderr


DROPPED_BY_A_LIBRARY = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from utils.cli import run
from utils.run.signals import StopSignals

def main():
    try:  # a library call that drops every error, as C code that clears a pending one does
        os.kill(os.getpid(), signal.{signal})
        sum(range(1000))
    except BaseException:
        pass
    if {loop}:
        StopSignals()  # the training loop starts: it must not
        print("trained", flush=True)

run(main, "train.py", "train")
"""


@pytest.mark.parametrize("loop", [True, False], ids=["before the loop", "at the end"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_a_library_drops_still_stops_the_run(signum, loop):
    """What the load test caught: a Ctrl-C during data set-up raised inside a library that swallowed it, and
    training went on for its 1000 epochs. The loop's start honours it; so does the end of the program."""
    script = DROPPED_BY_A_LIBRARY.format(repo=str(REPO), signal=signum.name, loop=loop)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signum, done.stdout + done.stderr
    assert "trained" not in done.stdout and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train.py: stopped by {signum.name}"), done.stderr
