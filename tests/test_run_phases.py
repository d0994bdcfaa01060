"""A run's moments that outsiders broke: a stop during the last validation, a checkpoint whose position or
format is not what the loop can go on from, and config checks that come after the run set itself up."""

import os
import re
import signal
import subprocess

import pytest
import torch

from tests.helpers import FAST, PYTHON, REFERENCE_RUN, REPO, read_metrics, run_cli, train_in_process
from utils.run.checkpoint import FORMAT_VERSION, load_checkpoint

pytestmark = REFERENCE_RUN


def one_error(proc, fragment: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "[ERROR]" in line]
    assert len(lines) == 1 and fragment in lines[0], out
    return lines[0]


@pytest.mark.slow
@pytest.mark.needs("conf/data/fake.yaml")
def test_a_stop_during_the_last_validation_is_honoured_and_resume_redoes_it(tmp_path):
    """SIGTERM (scancel, a preemption) while the last epoch validates: the run stops within an evaluation
    batch, saves last.pt before that validation, and does not test; a resume validates, then tests."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # A large validation split of images decoded on the fly: it takes long enough to land in.
    args = [*FAST, "data=fake", "data.dataset.val_size=5000", "data.num_workers=0", "data.batch_size=8",
            "logging.every_n_steps=1", f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.Popen([PYTHON, str(REPO / "train.py"), *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    lines = []
    for line in proc.stdout:  # the state itself: the last step is logged, the validation begins
        lines.append(line)
        if re.search(r"step 3/3 ", line):
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "Stopped by SIGTERM at step 3" in out and "val acc" not in out, out
    assert not (run / "metrics.json").exists() and not (run / "checkpoints" / "best.pt").exists()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 3, 3)  # before the validation

    resumed = run_cli([f"resume={run}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert re.search(r"epoch 0 step 3: val", resumed.stdout + resumed.stderr)
    assert read_metrics(run)["steps"] == 3 and (run / "checkpoints" / "best.pt").exists()


@pytest.mark.slow
def test_a_checkpoints_position_and_format_are_checked_in_one_line(tmp_path):
    run = tmp_path / "run"
    train_in_process(FAST, run)
    last = run / "checkpoints" / "last.pt"
    good = load_checkpoint(last)
    bad = {
        "step": ("abc", "its step is 'abc', not a whole number >= 0"),
        "epoch": (-5, "its epoch is -5, not a whole number >= 0"),
        "batch_in_epoch": (999, "its batch_in_epoch 999 is past the epoch's 3 batches"),
        "nonfinite_skipped": (1.5, "its nonfinite_skipped is 1.5"),
        "best": ("high", "its best is 'high', not a number"),
        "format_version": (FORMAT_VERSION + 1, f"has format version {FORMAT_VERSION + 1}, which this code"),
    }
    for key, (value, message) in bad.items():
        torch.save({**good, key: value}, last)
        proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
        assert "cannot be resumed" in one_error(proc, message) or key == "format_version"
    torch.save({**good, "step": 10**9}, last)
    (run / "metrics.json").unlink()  # else it reads as a run that finished its 10**9 steps
    one_error(run_cli([f"resume={run}", "trainer.max_epochs=2"]), "its step 1000000000 is more than")

    last.write_bytes(os.urandom(4096))  # random bytes are unreadable, not "pickled objects"
    line = one_error(run_cli([f"resume={run}", "trainer.max_epochs=2"]), "unreadable or truncated")
    assert "pickled" not in line

    torch.save(good, last)  # the format of today, and of before the version was stored, load
    assert run_cli([f"resume={run}", "trainer.max_epochs=2"]).returncode == 0
    old = load_checkpoint(last)
    del old["format_version"]
    torch.save(old, last)
    assert run_cli([f"resume={run}", "trainer.max_epochs=3"]).returncode == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.val_every_n_steps=1000"], "is more than the run's 3 steps"),  # needs the data's length
        (["task=regression"], "the task reads real targets"),  # checked on the composed parts
    ],
)
def test_a_late_config_check_is_the_only_line(tmp_path, overrides, message):
    """The set-up says nothing (run directory, TensorBoard, data sizes) until every check has passed."""
    proc = run_cli([*FAST, *overrides, f"paths.output_root={tmp_path}"])
    one_error(proc, message)
    assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1, proc.stdout + proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a rejected run left files"
