"""Merge conflicts left in the project's files (a `copier update` or `git merge` whose two sides changed
the same lines): found by their marker lines, so that a conflicted config is one line from train.py
instead of YAML's traceback, and so that a project can list every file still to resolve.

    python -m setup.conflicts          # each leftover marker and .rej file; exit 1 if there is one

No torch here: train.py checks conf/ with it before Hydra reads the files.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

# git's (and copier's --conflict inline) lines around the two sides; "=======" between them can be a
# file's own text (a Markdown underline), so it alone is no sign of a conflict.
MARKER = re.compile(r"^(<{7}|>{7})(?: |$)")
# Folders that are no part of the project's own files.
SKIPPED = {".git", ".venv", "venv", "__pycache__", "outputs", "multirun", "node_modules"}


class Marker(NamedTuple):
    path: str  # relative to the folder above the one searched (conf/x.yaml), or to the project
    line: int
    marker: str  # <<<<<<< or >>>>>>>

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.marker})"


def _markers_in(path: Path, shown_as: str) -> list[Marker]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):  # not text (an image, a checkpoint), or unreadable
        return []
    return [
        Marker(shown_as, number, found[1])
        for number, line in enumerate(text.splitlines(), 1)
        if (found := MARKER.match(line))
    ]


def conflict_markers(conf_dir: Path | str) -> list[Marker]:
    """Every conflict marker line in conf_dir/**/*.yaml, as conf/x.yaml:12, in path order."""
    conf_dir = Path(conf_dir)
    return [
        marker
        for path in sorted(conf_dir.rglob("*.yaml"))
        for marker in _markers_in(path, str(path.relative_to(conf_dir.parent)))
    ]


def conflict_line(conf_dir: Path | str) -> str | None:
    """One line about the first conflict in conf_dir's configs, or None when there is none."""
    found = conflict_markers(conf_dir)
    if not found:
        return None
    first = found[0]
    files = len({m.path for m in found})
    more = f"; {files} files hold markers" if files > 1 else ""
    return (
        f"{first.path}:{first.line} has an unresolved merge conflict ({first.marker}): keep the side you want "
        f"and delete the marker lines{more} (python -m setup.conflicts lists them all)"
    )


def leftovers(root: Path | str) -> tuple[list[Marker], list[str]]:
    """Every conflict marker line in the project's text files under root, and every .rej file (copier
    update --conflict rej writes the template's side there)."""
    root = Path(root)
    markers, rejects = [], []
    for folder, dirs, names in os.walk(root):  # not into SKIPPED or hidden folders (caches), nor links
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED and (d == ".github" or not d.startswith(".")))
        for name in sorted(names):
            path = Path(folder) / name
            shown = str(path.relative_to(root))
            if name.endswith(".rej"):
                rejects.append(shown)
            elif path.is_file():
                markers += _markers_in(path, shown)
    return markers, rejects


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    markers, rejects = leftovers(root)
    for marker in markers:
        print(f"{marker}: unresolved merge conflict")
    for path in rejects:
        print(
            f"{path}: the template's side of a conflict (copier update --conflict rej): merge it, then delete it"
        )
    if markers or rejects:
        files = {m.path for m in markers} | set(rejects)
        print(f"setup.conflicts: {len(files)} file(s) to resolve", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
