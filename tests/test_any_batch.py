"""The task contract covers any batch and any output (issue 19): a fork whose targets are variable-length
lists, batched by its data config's collate function, whose model returns its own named losses in train
mode and a list in eval mode, and whose task has no validation loss. One task, one model and one data file
with their yamls (tests/user_task/bump*), dropped into a copy of this template with no other edit, train,
log each loss, resume exactly after kill -9 and evaluate."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
import torch

from tests.helpers import PYTHON, REPO, event_accumulator, kill9_once_written, needs, read_metrics, runnable

FORK_FILES = {
    "bumps.py": "tasks",
    "bumps.yaml": "conf/task",
    "bump_signals.py": "data",
    "bump_signals.yaml": "conf/data",
    "bump_finder.py": "models",
    "bump_finder.yaml": "conf/model",
}
pytestmark = needs("tests/user_task/bumps.py")  # a generated project may leave the example forks out
RUNNABLE = runnable()
RUN = ["task=bumps", "data=bump_signals", "model=bump_finder", "logging.progress_bar=false",
       "logging.every_n_steps=4", "trainer.max_epochs=3"]  # fmt: skip


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    root = tmp_path_factory.mktemp("fork")
    for name in RUNNABLE:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    for name, folder in FORK_FILES.items():
        shutil.copy(
            REPO / "tests" / "user_task" / name, root / folder / name.replace("bumps.yaml", "bumps.yaml")
        )
    return root


def cli(fork, *args, script="train.py"):
    return subprocess.run([PYTHON, script, *args], cwd=fork, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_fork_with_variable_targets_and_a_loss_dict_trains_resumes_and_evaluates(fork, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = cli(fork, *RUN, f"hydra.run.dir={whole}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(whole)
    assert metrics["monitor"] == "val/f1" and "test/f1" in metrics and "val/loss_last" not in metrics
    assert metrics["test/f1"] > 0.5, metrics  # it learned to find bumps
    tags = event_accumulator(whole).Tags()["scalars"]
    # Each named loss is a train scalar of its own, beside their sum; no train metric from a loss dict.
    assert {"train/loss", "train/loss_positions", "train/loss_count"} <= set(tags)
    assert not [t for t in tags if t.startswith("train/f1")] and "val/f1" in tags

    victim = subprocess.Popen([PYTHON, "train.py", *RUN, "trainer.checkpoint_every_n_steps=10",
                               f"hydra.run.dir={killed}"], cwd=fork,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert kill9_once_written(victim, killed / "checkpoints" / "step_00000020.pt") == -signal.SIGKILL
    resumed = cli(fork, f"resume={killed}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a, b = (
        torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (whole, killed)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)

    evaluated = cli(fork, f"ckpt={whole / 'checkpoints' / 'best.pt'}", script="eval.py")
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert read_metrics(whole / "checkpoints")["test/f1"] == pytest.approx(metrics["test/f1"])


BROKEN_IN_TRAIN_MODE = """
from models.bump_finder import BumpFinder


class Broken(BumpFinder):
    def forward(self, signals, positions=None):
        if positions is not None:
            return {"loss": signals.sum(dim=(1, 2)) @ signals[0]}  # a shape mistake, in train mode only
        return super().forward(signals)
"""


def test_a_model_that_fails_only_in_train_mode_is_one_line_with_its_place(fork, tmp_path):
    """The check before training runs one batch in train mode too: a failure there is told before the
    first step, with the original error's type, message and place."""
    (fork / "models" / "broken_finder.py").write_text(BROKEN_IN_TRAIN_MODE)
    config = (fork / "conf" / "model" / "bump_finder.yaml").read_text()
    (fork / "conf" / "model" / "broken_finder.yaml").write_text(
        config.replace("bump_finder.BumpFinder", "broken_finder.Broken")
    )
    done = cli(fork, *RUN, "model=broken_finder", f"paths.output_root={tmp_path}")
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in out, out
    [line] = [x for x in out.splitlines() if "[ERROR]" in x]
    assert "fail on a batch of the data in train mode: RuntimeError:" in line, line
    assert "(at models/broken_finder.py:8)" in line, line  # the place: the line of the fork that failed


def test_samples_that_do_not_stack_name_the_collate_function(fork, tmp_path):
    done = cli(fork, *RUN, "data.collate_fn=null", f"paths.output_root={tmp_path}")
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in out, out
    [line] = [x for x in out.splitlines() if "[ERROR]" in x]
    assert "cannot make a batch: RuntimeError: stack expects" in line and "data.collate_fn" in line, line
