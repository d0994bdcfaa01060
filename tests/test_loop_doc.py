"""docs/loop.md's worked example of a second optimizer: its patch applies to this checkout, and beside a
fork's own edits of the same lines' neighbours (a three-way merge, as `git apply --3way`); trained, stopped
with kill -9 and resumed, it ends equal to the run never stopped, the critic and its optimizer included
(tests/test_resume.py's matrix, its loop_doc case, checked by `critic_stepped` below)."""

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import REFERENCE_RUN, REPO

pytestmark = [REFERENCE_RUN, pytest.mark.needs("docs/loop.md")]
KEEP_OUT = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "multirun", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def the_patch() -> str:
    blocks = re.findall(r"^```diff\n(.*?)^```", (REPO / "docs" / "loop.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "docs/loop.md should hold one diff block"
    return blocks[0]


def git(copy: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=copy, capture_output=True, text=True)


def apply_the_patch(copy: Path) -> None:
    """Apply docs/loop.md's patch to a copy of a checkout with `git apply --3way`: where a fork edited the
    lines around a hunk, the change is merged from the file the patch was written against (the blob its
    `index` line names, found in this checkout's git history), and an edit of the fork and a line of the
    patch added at the same place are both kept (merge=union). In a checkout without that history (a
    generated project) the patch applies as it is written, as plain `git apply` does."""
    patch = the_patch()
    (copy / "critic.diff").write_text(patch)
    touched = re.findall(r"^diff --git a/(\S+) b/", patch, re.M)
    assert git(copy, "init", "-q").returncode == 0
    history = git(REPO, "rev-parse", "--path-format=absolute", "--git-common-dir")
    if history.returncode == 0:  # the checkout's objects, readable from the copy's repository
        (copy / ".git" / "objects" / "info" / "alternates").write_text(f"{history.stdout.strip()}/objects\n")
    (copy / ".git" / "info" / "attributes").write_text("* merge=union\n")
    assert git(copy, "add", "--", *touched).returncode == 0  # --3way works on the index
    applied = git(copy, "apply", "--3way", "critic.diff")
    assert applied.returncode == 0, (
        f"docs/loop.md's patch no longer applies:\n{applied.stdout}{applied.stderr}"
    )
    for path in touched:
        assert "<<<<<<<" not in (copy / path).read_text(), f"{path}: a conflict left by docs/loop.md's patch"


def copy_of_checkout(tmp_path: Path) -> Path:
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=KEEP_OUT)
    return copy


def critic_checkout_in(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """For tests/test_resume.py's kill -9 matrix: a copy of this checkout with docs/loop.md's patch."""
    copy = copy_of_checkout(tmp_path)
    apply_the_patch(copy)
    return copy, {}


def critic_stepped(whole: Path, killed: Path) -> None:
    """The patched run of the matrix (equal, checkpoint for checkpoint, to the run never killed) trained the
    critic: its optimizer's moments moved."""
    saved = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    assert {"critic", "critic_optimizer"} <= set(saved)
    moments = [s["exp_avg"] for s in saved["critic_optimizer"]["state"].values()]
    assert moments and all(m.abs().sum() > 0 for m in moments), "the critic's optimizer never stepped"


# A fork's first edits beside the patch's hunks, each a text replaced: a key of its own after ema_decay, a
# line of its own right after the loss in `step`, a function of its own right after `step`. Each breaks an
# exact `git apply`.
LOSS = "            loss, named = nonfinite.total_loss(task.loss(output, batch))  # a dict's parts: logged one by one\n"
AFTER_STEP = "    return True\n\n\ndef validate_and_save("
FORK_EDITS = {
    "a key beside ema_decay": (
        "conf/trainer/default.yaml",
        "ema_decay: null\n",
        "ema_decay: null\n# A fork's own setting.\nlabel_smoothing: 0.0\n",
    ),
    "a line after the loss in step": (
        "train.py",
        LOSS,
        LOSS + "            loss = loss * 1.0  # a fork's own line\n",
    ),
    "a function after step": (
        "train.py",
        AFTER_STEP,
        AFTER_STEP.replace("def validate", "def fork_helper() -> int:\n    return 1\n\n\ndef validate"),
    ),
}


def history_has_the_patch_base() -> bool:
    """Whether this checkout's git history holds every file the patch was written against (its `index`
    lines): a clone of the template does; a generated project, or a checkout without git, does not."""
    bases = (
        re.findall(r"^index ([0-9a-f]+)\.\.", the_patch(), re.M)
        if (REPO / "docs" / "loop.md").exists()
        else []
    )
    found = [subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{b}^{{blob}}"], capture_output=True)
             for b in bases]  # fmt: skip
    return bool(bases) and all(f.returncode == 0 for f in found)


@pytest.mark.skipif(
    not history_has_the_patch_base(),
    reason="no git history of the files docs/loop.md's patch was written against: nothing to merge from",
)
@pytest.mark.parametrize("edit", FORK_EDITS, ids=lambda edit: edit.replace(" ", "_"))
def test_the_patch_applies_beside_a_forks_own_edit(edit, tmp_path):
    path, old, new = FORK_EDITS[edit]
    copy = copy_of_checkout(tmp_path)
    text = (copy / path).read_text()
    assert text.count(old) == 1, f"{path} no longer holds {old!r} once: update FORK_EDITS"
    (copy / path).write_text(text.replace(old, new))
    exact = subprocess.run(["git", "apply", "--check"], cwd=copy, input=the_patch(), capture_output=True,
                           text=True)  # fmt: skip
    assert exact.returncode != 0, "the fork's edit does not touch the patch's context: it proves nothing"

    apply_the_patch(copy)
    merged = (copy / path).read_text().splitlines()
    own = [line for line in new.splitlines() if line not in old.splitlines()]
    assert all(line in merged for line in own), "the fork's edit was lost"
    assert "critic_weight" in (copy / "conf/trainer/default.yaml").read_text()
    assert "def critic_step(" in (copy / "train.py").read_text()
    ast.parse((copy / "train.py").read_text())
    yaml.safe_load((copy / "conf/trainer/default.yaml").read_text())
