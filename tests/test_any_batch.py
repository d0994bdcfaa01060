"""The task contract covers any batch and any output (issue 19): a fork whose targets are variable-length
lists, batched by its data config's collate function, whose model returns its own named losses in train
mode and a list in eval mode, and whose task has no validation loss. One task, one model and one data file
with their yamls (tests/user_task/bump*), dropped into a copy of this template with no other edit, train,
log each loss, resume exactly after kill -9 and evaluate (tests/test_resume.py's matrix, its any_batch
case, checked by `logs_each_loss` below); here, its mistakes are one line."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import PYTHON, REPO, event_accumulator, needs, read_metrics, runnable

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


def bumps_fork(root):
    """A copy of this template's runnable tree at root with the six fork files added, nothing else changed."""
    root.mkdir(parents=True, exist_ok=True)
    for name in RUNNABLE:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    for name, folder in FORK_FILES.items():
        shutil.copy(REPO / "tests" / "user_task" / name, root / folder / name)
    return root


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    return bumps_fork(tmp_path_factory.mktemp("fork"))


def bumps_fork_in(tmp_path):
    """For tests/test_resume.py's kill -9 matrix: the fork, and the overrides that train its run."""
    return bumps_fork(tmp_path / "fork"), dict(arg.split("=", 1) for arg in RUN)


def cli(fork, *args, script="train.py"):
    return subprocess.run([PYTHON, script, *args], cwd=fork, capture_output=True, text=True, timeout=300)


def logs_each_loss(whole, killed) -> None:
    """The fork's run of tests/test_resume.py's matrix (killed -9, resumed, evaluated, equal to the run never
    killed) learned to find bumps and logged each of its named losses."""
    metrics = read_metrics(whole)
    assert metrics["monitor"] == "val/f1" and "test/f1" in metrics and "val/loss_last" not in metrics
    assert metrics["test/f1"] > 0.5, metrics  # it learned to find bumps
    tags = event_accumulator(whole).Tags()["scalars"]
    # Each named loss is a train scalar of its own, beside their sum; no train metric from a loss dict.
    assert {"train/loss", "train/loss_positions", "train/loss_count"} <= set(tags)
    assert not [t for t in tags if t.startswith("train/f1")] and "val/f1" in tags


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
