"""The floors of docs/loop.md, held against the code: every import of every file (at the top or inside a
function) goes to its own folder or to a floor below. The table is read from the page, so the page and
the code cannot drift apart; a project without some folders checks the ones it has."""

from __future__ import annotations

import ast
import re

import pytest

from tests.helpers import REPO

ROW = re.compile(r"^\| (\d+) \| ([^|]+) \|", re.M)


def floors() -> dict[str, int]:
    """Each folder (or entry-point file) of the table in docs/loop.md, with its floor."""
    text = (REPO / "docs" / "loop.md").read_text()
    section = text.split("## The floors", 1)[1].split("\n## ", 1)[0]
    found = {}
    for number, names in ROW.findall(section):
        for name in re.findall(r"`([^`]+)`", names):
            found[name.rstrip("/")] = int(number)
            if name.endswith(
                ".py"
            ):  # an entry point is imported by its module name (the benchmark's `train`)
                found[name.removesuffix(".py")] = int(number)
    return found


def imports(path) -> list[tuple[int, str]]:
    """The top-level module of every import in the file, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module.split(".")[0]))
    return names


FLOORS = floors()
FILES = sorted(
    path.relative_to(REPO).as_posix()
    for name in FLOORS
    for path in ([REPO / name] if name.endswith(".py") else (REPO / name).rglob("*.py"))
    if path.is_file() and (REPO / name).exists()
)


def test_the_table_names_every_package_of_the_project():
    """A new folder of code takes a floor (a row of the table) before it takes imports."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(FLOORS), f"folders with no floor in docs/loop.md: {sorted(packages - set(FLOORS))}"
    assert len(FILES) > len(FLOORS)


@pytest.mark.parametrize("name", FILES)
def test_a_file_imports_only_its_folder_and_the_floors_below(name):
    own = name.split("/")[0] if "/" in name else name.removesuffix(".py")
    wrong = [
        f"{name}:{line} imports {module} (floor {FLOORS[module]}; {own} is on floor {FLOORS[own]})"
        for line, module in imports(REPO / name)
        if module in FLOORS and module != own and FLOORS[module] >= FLOORS[own]
    ]
    assert not wrong, "\n".join(wrong)
