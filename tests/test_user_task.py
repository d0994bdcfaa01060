"""A new task is one .py and one .yaml: a user's multi-label task and a multi-label dataset, kept as they
would be written in tests/user_task/, are dropped into a copy of this template with no other edit. There
the copy's own test matrix picks them up; they train, resume after kill -9 and evaluate from the command
line in tests/test_resume.py's matrix (its user_task case, checked by `learned` below)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loop.evaluation import measure
from tasks.base import TaskError
from tests.helpers import PYTHON, REPO, read_metrics, runnable

USER_TASK = REPO / "tests" / "user_task"
# Where a user puts each file in their fork: nowhere else is anything added or edited.
USER_FILES = {
    "multilabel.py": "tasks",
    "multilabel.yaml": "conf/task",
    "digit_attributes.py": "data",
    "digit_attributes.yaml": "conf/data",
}
# What a fork needs to train and run its tests (no .venv, .git or outputs).
RUNNABLE = runnable("tests")
USER_RUN = ["task=multilabel", "data=digit_attributes", "model=mlp", "logging.progress_bar=false"]


def load(name: str):
    """A module of tests/user_task/, imported from its file (it is not a package of this repo)."""
    spec = importlib.util.spec_from_file_location(f"user_task_{name}", USER_TASK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- The user's files themselves: quick ------------------------------------------------------------------


def test_f1_exact_match_and_loss_agree_with_scikit_learn_over_batches():
    from sklearn.metrics import accuracy_score, f1_score

    task = load("multilabel").MultiLabel(num_labels=5)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 5, generator=gen)
    targets = (torch.rand(100, 5, generator=gen) < 0.4).float()
    found = task.init_metrics(torch.device("cpu"))
    for rows in torch.arange(100).split(32):  # 32, 32, 32, 4: the metrics add up across batches
        task.update(found, logits[rows], (None, targets[rows]))
    metrics = measure(task, found)
    assert set(metrics) == set(task.metrics)
    pred = (logits.sigmoid() > 0.5).numpy()
    assert metrics["f1"] == pytest.approx(f1_score(targets.numpy(), pred, average="micro"))
    assert metrics["exact_match"] == pytest.approx(accuracy_score(targets.numpy(), pred))  # subset accuracy
    assert metrics["loss"] == pytest.approx(task.loss(logits, (None, targets)).item(), rel=1e-6)
    assert metrics["loss"] == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets).item())


def test_the_task_checks_name_the_shapes():
    task = load("multilabel").MultiLabel(num_labels=4)
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(TaskError, match=r"num_labels=4\], got int64 \[2\]"):
        task.check(torch.zeros(2, 4), (images, torch.tensor([3, 7])))  # class labels, not multi-hot rows
    with pytest.raises(TaskError, match=r"shaped like the targets \[2, 4\], got \[2, 10\]"):
        task.check(torch.zeros(2, 10), (images, torch.zeros(2, 4)))
    with pytest.raises(TaskError, match="0.0 and 1.0"):
        task.check_targets(torch.full((3, 4), 0.5))
    task.check(torch.zeros(2, 4), (images, torch.zeros(2, 4)))
    task.check_targets(torch.eye(4))
    with pytest.raises(TaskError, match="monitor"):
        load("multilabel").MultiLabel(num_labels=4, monitor="acc")


def test_digit_attributes_are_the_digits_splits_with_multi_hot_rows():
    from data.digits import digits

    user = load("digit_attributes")
    args = (0.15, 0.15, 0, [0.3], [0.38])
    ours, theirs = user.digit_attributes(*args), digits(*args)
    assert user.ATTRIBUTES[7].tolist() == [0, 1, 1, 0]  # odd, > 4, prime, no loop
    for split in ("train", "val", "test"):
        (x, y), (x_digits, labels) = getattr(ours, split).tensors, getattr(theirs, split).tensors
        assert torch.equal(x, x_digits) and y.dtype == torch.float32 and y.shape == (len(labels), 4)
        assert torch.equal(y, user.ATTRIBUTES[labels])


# --- The user's files in a fork: the command line and the fork's own tests -------------------------------


def user_fork(root: Path) -> Path:
    """A copy of this template's runnable tree at root with the four user files added, nothing else changed."""
    root.mkdir(parents=True, exist_ok=True)
    for name in RUNNABLE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    for name, folder in USER_FILES.items():
        assert not (root / folder / name).exists(), f"{folder}/{name} ships already: this proves nothing"
        shutil.copy2(USER_TASK / name, root / folder / name)
    return root


@pytest.fixture(scope="module")
def fork(tmp_path_factory) -> Path:
    return user_fork(tmp_path_factory.mktemp("fork"))


def user_fork_in(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """For tests/test_resume.py's kill -9 matrix: the fork, and the overrides that train the user's run."""
    run = dict(arg.split("=", 1) for arg in USER_RUN)
    return user_fork(tmp_path / "fork"), run


def learned(whole: Path, killed: Path) -> None:
    """The user's run of tests/test_resume.py's matrix (five epochs, killed -9, resumed, evaluated, equal to
    the run never killed) learned its labels: predicting every label for every image scores F1 0.62 here
    (45% of the labels are on)."""
    metrics = read_metrics(whole)
    assert metrics["monitor"] == "val/f1" and metrics["mode"] == "max" and metrics["epochs"] == 5
    assert {"test/loss", "test/f1", "test/exact_match", "val/f1_best"} <= set(metrics)
    assert metrics["test/f1"] >= 0.9 and metrics["val/f1_best"] >= 0.9, metrics


def run_in(fork: Path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in the fork, with this venv's python, as the user types it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("HYDRA_FULL_ERROR", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    proc = subprocess.run([PYTHON, *args], cwd=fork, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"python {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_fork_s_own_test_matrix_picks_the_user_task_up(fork):
    """The fork's tests/test_configs.py and tests/test_train.py, unedited, pair the new task and data with
    the models by what the configs declare, and compose, build and train them (mlp: the others are the
    same code, and resnet18 would train for a minute on two busy cores)."""
    report = fork / "junit.xml"
    selection = "(multilabel or digit_attributes or declares) and not (trains_in_process and not mlp)"
    tests = ["tests/test_configs.py", "tests/test_train.py", "-k", selection]
    run_in(fork, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, f"--junitxml={report}")
    cases = list(ET.parse(report).iter("testcase"))
    # Each passed, or skipped for an optional extra that is not installed (model=timm without timm).
    for_extra = [
        c
        for c in cases
        if c.find("skipped") is not None and "pip install -e" in c.find("skipped").get("message", "")
    ]
    passed = {f"{c.get('classname')}::{c.get('name')}" for c in cases if not len(c)}  # no failure, no skip
    assert len(passed) + len(for_extra) == len(cases), [c.get("name") for c in cases if len(c)]
    user = "[multilabel-digit_attributes-"
    assert any(p.startswith("tests.test_configs::") and user in p for p in passed), passed
    assert any(p.startswith("tests.test_train::") and user in p for p in passed), passed
    assert "tests.test_configs::test_offline_data_config_instantiates[digit_attributes]" in passed, passed
    assert "tests.test_configs::test_every_config_declares_what_it_takes_and_gives" in passed, passed


def test_docs_show_the_user_files_as_they_are_tested():
    """docs/tasks.md shows each user file in a block headed `# <where it goes>`, or (a `# @package
    _global_` yaml, whose header Hydra reads only as its first line) named on the line above the block:
    it must be the tested file."""
    import re

    doc = (REPO / "docs" / "tasks.md").read_text()
    blocks = dict(re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", doc, flags=re.S))
    blocks |= dict(re.findall(r"^`(\S+)`:\n\n```yaml\n(.*?)```", doc, flags=re.S | re.M))
    for name, folder in USER_FILES.items():
        assert blocks.get(f"{folder}/{name}") == (USER_TASK / name).read_text(), (
            f"docs/tasks.md: {folder}/{name}"
        )
