"""A non-finite loss: by default an error naming the step and the last good checkpoint; with
trainer.skip_nonfinite=true the batch is skipped and counted. Real training on digits with one NaN image."""

import json

import pytest
import torch

from loop.nonfinite import NonFiniteLossError
from store.checkpoint import load_checkpoint
from tests.helpers import run_cli, train_in_process

BATCH = 32


def poisoned(step: int) -> list[str]:
    """Overrides that put a NaN image into the batch of optimizer step `step` (1-based) of epoch 0."""
    return [
        "data.dataset._target_=tests.poisoned_data.poisoned_digits",
        f"+data.dataset.position={(step - 1) * BATCH}",
        "+data.dataset.seed=${trainer.seed}",
        f"data.batch_size={BATCH}",
        "trainer.max_epochs=1",
        "logging.progress_bar=false",
        "logging.every_n_steps=20",
    ]


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as caught:
        train_in_process([*poisoned(6), "trainer.checkpoint_every_n_steps=4"], run)
    message = str(caught.value)
    assert "step 6" in message and "\n" not in message
    # Detected before the step-8 checkpoint (no sync per step), which is therefore never written.
    assert f"last good checkpoint: {run / 'checkpoints' / 'last.pt'}" in message
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == 4
    assert not (run / "checkpoints" / "step_00000008.pt").exists()
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_skip_nonfinite_skips_and_counts_the_batch(tmp_path):
    run = tmp_path / "run"
    train_in_process([*poisoned(3), "trainer.skip_nonfinite=true"], run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nonfinite_batches_skipped"] == 1
    batches = 1257 // BATCH  # digits' training split, ragged batch dropped
    assert metrics["steps"] == batches - 1  # the skipped batch made no optimizer step
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["nonfinite_skipped"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert metrics["test/acc"] > 0.5


def test_nonfinite_error_from_the_cli_is_one_line_exit_2(tmp_path):
    run = tmp_path / "run"
    proc = run_cli([*poisoned(2), f"hydra.run.dir={run}"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "non-finite loss at step 2" in errors[0]
    assert "no checkpoint was saved before it" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
