"""A run's moments that outsiders broke: a checkpoint whose position or format is not what the loop can go on
from. (Config checks that come after the run set itself up: tests/test_cli.py's table of bad values; a stop
during the last validation: tests/test_signals.py.)"""

import os
import re

import pytest
import torch

from store.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint
from tests.helpers import FAST, REFERENCE_RUN, run_cli, train_in_process

pytestmark = REFERENCE_RUN


def one_error(proc, fragment: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "[ERROR]" in line]
    assert len(lines) == 1 and fragment in lines[0], out
    return lines[0]


@pytest.mark.slow
def test_a_checkpoints_position_and_format_are_checked_in_one_line(tmp_path):
    """Every field is checked where every reader loads a checkpoint (load_checkpoint); the position against
    the run's plan where resume restores it. One resume through the command line for each."""
    run = tmp_path / "run"
    train_in_process(FAST, run)
    last = run / "checkpoints" / "last.pt"
    good = load_checkpoint(last)
    bad = {
        "step": ("abc", "its step is 'abc', not a whole number >= 0"),
        "epoch": (-5, "its epoch is -5, not a whole number >= 0"),
        "nonfinite_skipped": (1.5, "its nonfinite_skipped is 1.5"),
        "best": ("high", "its best is 'high', not a number"),
        "format_version": (FORMAT_VERSION + 1, f"has format version {FORMAT_VERSION + 1}, which this code"),
    }
    for key, (value, message) in bad.items():
        torch.save({**good, key: value}, last)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_checkpoint(last)
    last.write_bytes(os.urandom(4096))  # random bytes are unreadable, not "pickled objects"
    with pytest.raises(CheckpointError, match="unreadable or truncated") as err:
        load_checkpoint(last)
    assert "pickled" not in str(err.value)

    torch.save({**good, "step": "abc"}, last)
    assert "cannot be resumed" in one_error(
        run_cli([f"resume={run}", "trainer.max_epochs=2"]), "its step is 'abc'"
    )
    torch.save({**good, "batch_in_epoch": 999}, last)
    one_error(
        run_cli([f"resume={run}", "trainer.max_epochs=2"]), "its batch_in_epoch 999 is past the epoch's 3"
    )
    torch.save({**good, "step": 10**9}, last)
    (run / "metrics.json").unlink()  # else it reads as a run that finished its 10**9 steps
    one_error(run_cli([f"resume={run}", "trainer.max_epochs=2"]), "its step 1000000000 is more than")

    old = dict(good)  # the format of before the version was stored loads, and goes on
    del old["format_version"]
    torch.save(old, last)
    assert run_cli([f"resume={run}", "trainer.max_epochs=2"]).returncode == 0
