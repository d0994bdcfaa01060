"""Checkpoints: what they hold, that a kill mid-save never leaves a truncated last.pt, that pickled code is
refused unrun, and that bad checkpoints fail in one line."""

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.helpers import FAST, PYTHON, REPO, event_accumulator, run_cli, train_in_process


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]


def test_checkpoints_hold_every_state_as_plain_containers(tmp_path):
    run = tmp_path / "run"
    train_in_process(
        ["trainer.max_epochs=2", "trainer.limit_batches=5", "trainer.checkpoint_every_n_steps=3", *FAST[2:]],
        run,
    )
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == [f"step_{n:08d}.pt" for n in (3, 6, 9)]
    mid = load_checkpoint(ckpts / "step_00000003.pt")  # weights_only=True
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"]) == (0, 3, 3)
    assert {"python", "numpy", "torch"} <= set(mid["rng"])
    assert mid["data_order"]["epoch"] == 0 and mid["data_order"]["batch"] == 3
    assert mid["optimizer"]["state"] and mid["scheduler"]["last_epoch"] == 3
    assert "scaler" in mid and isinstance(mid["config"], dict)  # a plain dict, not a DictConfig
    last = load_checkpoint(ckpts / "last.pt")
    assert (last["epoch"], last["batch_in_epoch"], last["step"]) == (2, 0, 10)
    # best.pt is the checkpoint of the best validation accuracy.
    best = load_checkpoint(ckpts / "best.pt")
    val_acc = {e.step: e.value for e in event_accumulator(run).Scalars("val/acc")}
    best_step = max(val_acc, key=lambda s: (val_acc[s], -s))  # the first step with the top accuracy
    assert best["step"] == best_step
    assert best["best"] == pytest.approx(val_acc[best_step], rel=1e-6)  # events hold float32
    # Made under the process's umask, as any new file would be (mkstemp alone would make it 0600).
    mask = os.umask(0o022)
    os.umask(mask)
    assert (ckpts / "last.pt").stat().st_mode & 0o777 == 0o666 & ~mask
    # An epoch that improves writes best.pt once and gives last.pt its name too: one write, not two.
    assert (ckpts / "best.pt").samefile(ckpts / "last.pt") == (best_step == last["step"])


def test_keep_step_checkpoints_deletes_the_oldest_as_new_ones_land(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_notes.pt").write_text("a user's file, not a step checkpoint")
    overrides = ["trainer.checkpoint_every_n_steps=2", "trainer.keep_step_checkpoints=2", *FAST[2:]]
    train_in_process(["trainer.max_epochs=2", "trainer.limit_batches=5", *overrides], run)
    ckpts = run / "checkpoints"
    # Steps 2, 4, 6, 8 and 10 were saved; the newest two are left, and the user's file is untouched.
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == [
        "step_00000008.pt",
        "step_00000010.pt",
        "step_notes.pt",
    ]
    assert load_checkpoint(ckpts / "step_00000010.pt")["step"] == 10
    assert (ckpts / "last.pt").is_file() and (ckpts / "best.pt").is_file()


SAVER = textwrap.dedent(
    """
    import sys, torch
    from store.checkpoint import save_checkpoint
    path, i = sys.argv[1], 0
    while True:
        i += 1
        save_checkpoint({"model": {"w": torch.full((2_000_000,), float(i))}, "i": i}, path)
        print(i, flush=True)
    """
)


def saving(directory: Path, full_size: int | None, timeout: float = 120) -> None:
    """Until a save is in flight: its temp file exists (full_size None: being written), or has all its bytes
    (being fsynced, or about to replace last.pt)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tmp in directory.glob(".last.pt.*.tmp"):
            try:
                if full_size is None or tmp.stat().st_size >= full_size:
                    return
            except FileNotFoundError:
                pass  # replaced in the meantime: wait for the next save
        time.sleep(0.0005)
    raise AssertionError(f"no save in flight in {directory} within {timeout} s")


@pytest.mark.parametrize("moment", ["writing", "written", "between saves"])
def test_kill_during_save_never_leaves_a_truncated_checkpoint(tmp_path, moment):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(2_000_000)}, "i": 0}, path)
    full = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PYTHON, "-c", SAVER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # one save done: the next ones follow each other
        if moment == "writing":
            saving(tmp_path, None)
        elif moment == "written":
            saving(tmp_path, full)
        else:
            proc.stdout.readline()  # a save just ended (os.replace done), the next about to start
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(path)  # whole, old or new: never half
    assert torch.equal(state["model"]["w"], torch.full((2_000_000,), float(state["i"])))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.") for name in leftovers)  # hidden temp files only


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this would create the marker file


def test_pickle_payload_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload_ran"
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    evil = run / "checkpoints" / "last.pt"
    evil.parent.mkdir()
    torch.save({"model": {}, "step": 1, "extra": Payload(marker)}, evil)
    try:
        load_checkpoint(evil)
        raise AssertionError("a checkpoint with a pickled object was loaded")
    except CheckpointError as err:
        assert "refused" in str(err)
    assert not marker.exists()
    proc = run_cli([f"resume={run}"])
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "refused" in error_lines(proc)[0]
    assert not marker.exists()


@pytest.mark.slow
def test_corrupt_missing_and_mismatched_checkpoints_fail_in_one_line(tmp_path):
    run = tmp_path / "run"
    train_in_process(FAST, run)
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()

    # Weights of another architecture than the config builds.
    state = load_checkpoint(last)
    state["model"] = {k: v[..., :3] for k, v in state["model"].items()}
    torch.save(state, last)
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(error_lines(proc)) == 1 and "does not fit this MLP" in error_lines(proc)[0]

    # A config that is not the run's own: the checkpoint came from elsewhere.
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    state["config"]["model"]["hidden_dims"] = [32]
    torch.save(state, last)
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(error_lines(proc)) == 1 and "belongs to another run" in error_lines(proc)[0]
    assert "model.hidden_dims" in error_lines(proc)[0]

    last.write_bytes(good[: len(good) // 2])  # truncated
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "unreadable or truncated" in error_lines(proc)[0]

    last.unlink()
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "last.pt does not exist" in error_lines(proc)[0]
    assert "Traceback" not in proc.stdout + proc.stderr
