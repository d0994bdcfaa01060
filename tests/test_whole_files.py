"""Every file a later command reads (checkpoints, metrics.json, env.json) is whole or absent: a signal, a
kill or a full disk while it is written leaves the previous one (or none), a half-written one from an
older version is told apart from a finished run (resume runs its test again), and a full disk anywhere in a run is one line, after
which freeing space and the resume command finish the run. The disk is a real one: a small tmpfs
mounted for the test (root only; skipped elsewhere, a failure in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from store.checkpoint import load_checkpoint
from system.files import atomic_file, write_json
from tests.helpers import PYTHON, REFERENCE_RUN, REPO, read_metrics, run_cli, wait_for_line

RUN = ["logging.progress_bar=false", "logging.every_n_steps=1", "data.batch_size=32"]


def test_a_signal_while_a_file_is_written_leaves_the_previous_one(tmp_path):
    """In a process of its own: SIGTERM lands in the middle of the write (raised by the handler, as
    everywhere outside the loop); the file keeps its old text and no temp file is left."""
    path = tmp_path / "metrics.json"
    write_json(path, {"steps": 1})
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from system.files import atomic_file
from system.signals import raise_on_signals
raise_on_signals()
with atomic_file({str(path)!r}, "w") as f:
    f.write('{{"steps": ')
    os.kill(os.getpid(), signal.SIGTERM)
    f.write("2}}")
"""
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Interrupted: SIGTERM" in done.stderr, done.stderr
    assert json.loads(path.read_text()) == {"steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_error_while_a_new_file_is_written_leaves_none(tmp_path):
    path = tmp_path / "env.json"
    with pytest.raises(ZeroDivisionError), atomic_file(path, "w") as f:
        f.write("{")
        raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []


# --- A real full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs: a file system that really fills up (ENOSPC), unlike a file-size limit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}"
        if os.environ.get("REQUIRE_E2E") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk; returns the filler (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


# (the line after which the disk is full, what the run had kept by then, as its one line says it: the
# run's life (life/run.py) when an event or a log line is the first write to fail, the checkpoint's writer
# (store/checkpoint.py) when the next checkpoint is)
MOMENTS = {
    "training, after a checkpoint": (r"step 12/", ("last.pt is whole", "the previous one is intact")),
    "the final test": (r"Testing best\.pt on the test split", ("metrics.json was not written",)),
}


@pytest.mark.slow
@REFERENCE_RUN  # a small run of known length and checkpoint size (the 16 MiB disk holds its checkpoints)
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_full_disk_is_one_line_and_the_resume_finishes_the_run(small_disk, moment):
    line, kept = MOMENTS[moment]
    run = small_disk / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "train.py"), *RUN, "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=10",
         f"hydra.run.dir={run}"],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen = wait_for_line(proc, line)
    proc.send_signal(signal.SIGSTOP)  # held at that moment while the disk fills
    try:
        filler = fill(small_disk)
    finally:
        proc.send_signal(signal.SIGCONT)
    out = seen + proc.communicate(timeout=240)[0]
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "Exception" not in out, out
    errors = [x for x in out.splitlines() if "[ERROR]" in x]
    assert len(errors) == 1 and "no space left" in errors[0] and any(k in errors[0] for k in kept), out
    assert not (run / "metrics.json").exists()  # absent, not empty
    assert not [p for p in run.rglob(".*.tmp")], list(run.rglob("*"))
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["step"]  # whole: it loads
    assert stopped >= 10
    filler.unlink()  # the user frees space; the run goes on from its last checkpoint to its end
    if moment == "the final test":  # as an older version left it, killed while writing: no finished run
        (run / "metrics.json").write_text("")
    done = run_cli([f"resume={run}"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_metrics(run)["steps"] == load_checkpoint(run / "checkpoints" / "last.pt")["step"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
