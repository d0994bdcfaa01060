"""Merge conflicts left by `copier update` (or git): this project holds none; a conflicted config stops
train.py and eval.py in one line, before Hydra reads it; `python -m setup.conflicts` lists every file left
to resolve."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from setup.conflicts import conflict_markers, leftovers
from tests.helpers import PYTHON, REPO, runnable

# What copier update --conflict inline leaves where both sides changed a line.
CONFLICT = "<<<<<<< before updating\nwidth: 48\n=======\nwidth: 64\n>>>>>>> after updating\n"


def test_this_project_holds_no_leftover_merge_conflict():
    """The project-side check after `copier update`: no file holds a conflict marker, no .rej is left."""
    markers, rejects = leftovers(REPO)
    assert not markers and not rejects, [*map(str, markers), *rejects]


def conflicted_copy(root: Path) -> Path:
    """A copy of the project's code and configs whose model config holds a merge conflict."""
    root.mkdir()
    for name in runnable():
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    model = sorted((root / "conf" / "model").glob("*.yaml"))[0]
    lines = model.read_text().splitlines(keepends=True)
    model.write_text("".join(lines[:2]) + CONFLICT + "".join(lines[2:]))
    return root


@pytest.mark.parametrize("script", ["train.py", "eval.py", "export.py"])
def test_a_config_with_a_merge_conflict_is_one_line(tmp_path, script):
    project = conflicted_copy(tmp_path / "project")
    model = sorted((project / "conf" / "model").glob("*.yaml"))[0].name
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([PYTHON, script], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
    assert proc.stderr.startswith(
        f"{script}: error: conf/model/{model}:3 has an unresolved merge conflict (<<<<<<<): "
    ), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (project / "outputs").exists()
    assert [str(m) for m in conflict_markers(project / "conf")] == [
        f"conf/model/{model}:3 (<<<<<<<)",
        f"conf/model/{model}:7 (>>>>>>>)",
    ]


def test_the_check_lists_every_file_left_to_resolve(tmp_path):
    project = conflicted_copy(tmp_path / "project")
    (project / "README.md").write_text("# mine\n" + CONFLICT)
    (project / "Makefile.rej").write_text("the template's side\n")
    (project / "docs").mkdir()
    (project / "docs" / "notes.md").write_text("Title\n=======\n\nA Markdown underline is no conflict.\n")
    proc = subprocess.run(
        [PYTHON, "-m", "setup.conflicts"], cwd=project, capture_output=True, text=True, timeout=60
    )
    model = sorted((project / "conf" / "model").glob("*.yaml"))[0].name
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "README.md:2 (<<<<<<<): unresolved merge conflict",
        "README.md:6 (>>>>>>>): unresolved merge conflict",
        f"conf/model/{model}:3 (<<<<<<<): unresolved merge conflict",
        f"conf/model/{model}:7 (>>>>>>>): unresolved merge conflict",
        "Makefile.rej: the template's side of a conflict (copier update --conflict rej): merge it, then delete it",
    ], proc.stdout
    assert proc.stderr == "setup.conflicts: 3 file(s) to resolve\n"
