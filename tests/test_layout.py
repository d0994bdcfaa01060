"""A run directory's layout (system/layout.py) and the typed view of a checkpoint (read_checkpoint): which
checkpoint a path names, which run a checkpoint belongs to, and what an older or EMA checkpoint reads as."""

from __future__ import annotations

import pytest
import torch

from store.checkpoint import CheckpointError, prune_step_checkpoints, read_checkpoint, save_checkpoint
from store.trained import read_evaluated
from system.layout import RunDir, checkpoint_to_evaluate


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_run_directory_names_best_then_last_and_a_file_names_itself(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    assert checkpoint_to_evaluate(run.path) is None  # a run stopped before its first checkpoint
    touch(run.last)
    assert checkpoint_to_evaluate(run.path) == run.last  # a run that never validated
    touch(run.best)
    assert checkpoint_to_evaluate(run.path) == run.best
    assert checkpoint_to_evaluate(run.checkpoints) == run.best  # the checkpoints/ folder itself
    step = touch(run.step_checkpoint(40))
    assert checkpoint_to_evaluate(step) == step and step.name == "step_00000040.pt"
    assert checkpoint_to_evaluate(tmp_path / "nowhere.pt") == tmp_path / "nowhere.pt"  # its reader says


def test_a_folder_of_copied_checkpoints_and_one_with_none(tmp_path):
    copied = touch(tmp_path / "copied" / "last.pt")
    assert checkpoint_to_evaluate(copied.parent) == copied
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as err:
        read_evaluated(tmp_path / "empty")
    assert str(err.value) == f"{tmp_path / 'empty'} holds no checkpoints/best.pt or last.pt"


def test_the_run_a_checkpoint_belongs_to(tmp_path):
    run = RunDir(tmp_path / "run")
    touch(run.last)
    assert RunDir.of_checkpoint(run.last) == run and RunDir.holding(run.last) == run
    assert RunDir.named_by(run.checkpoints) == run and RunDir.named_by(run.path) == run
    outside = touch(tmp_path / "kept" / "best.pt")
    assert RunDir.of_checkpoint(outside) == RunDir(tmp_path / "kept")  # its tb/ and metrics beside it
    assert RunDir.holding(outside) is None  # resume= refuses it
    assert RunDir.holding(touch(run.checkpoints / ".last.pt.123.tmp")) is None  # a write in flight
    assert RunDir.metrics_beside(run.best) == run.checkpoints / "metrics.json"


def test_step_checkpoints_are_pruned_by_their_step_not_their_name(tmp_path):
    run = RunDir(tmp_path)
    steps = [9, 10, 99_999_999, 100_000_000]  # the last one's name sorts before the one it follows
    for s in steps:
        touch(run.step_checkpoint(s))
    touch(run.best), touch(run.last)
    assert prune_step_checkpoints(run, 2) == [run.step_checkpoint(9), run.step_checkpoint(10)]
    assert run.step_checkpoints() == [run.step_checkpoint(s) for s in steps[2:]]
    assert run.best.exists() and run.last.exists()


def test_an_older_checkpoint_reads_with_defaults(tmp_path):
    """Format 1 before its version was stored: the model alone, no position, no config, no EMA."""
    weights = {"w": torch.ones(3)}
    save_checkpoint({"model": weights}, tmp_path / "old.pt")
    ckpt = read_checkpoint(tmp_path / "old.pt")
    assert (ckpt.format_version, ckpt.step, ckpt.epoch, ckpt.batch_in_epoch) == (1, 0, 0, 0)
    assert ckpt.config is None and ckpt.best is None and ckpt.data_order is None
    assert ckpt.evaluated_weights is ckpt.model_weights and torch.equal(ckpt.model_weights["w"], weights["w"])


def test_the_evaluated_weights_are_the_moving_average_when_the_run_kept_one(tmp_path):
    ema = {"module.w": torch.full((3,), 2.0), "n_averaged": torch.tensor(5)}
    save_checkpoint({"model": {"w": torch.ones(3)}, "ema": ema, "step": 5, "best": 1}, tmp_path / "a.pt")
    ckpt = read_checkpoint(tmp_path / "a.pt")
    assert ckpt.evaluated_weights.keys() == {"w"} and torch.equal(
        ckpt.evaluated_weights["w"], ema["module.w"]
    )
    assert ckpt.step == 5 and ckpt.best == 1.0 and isinstance(ckpt.best, float)
