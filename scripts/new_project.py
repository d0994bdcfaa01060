"""Start a new project from this checkout of the template: copier copy, with bad input refused in one line.

    python scripts/new_project.py ../my-project            # copier asks each question
    python scripts/new_project.py ../my-project --defaults --data tasks='[segmentation]' \\
        --data models='[unet]' --data datasets='[shapes]'

It runs `copier copy --vcs-ref HEAD <this checkout> DEST` (this checkout's files, committed or not; the
questions are in copier.yml), and adds what copier alone does not do. copier renders into a destination
that exists: it writes its files beside what is there and asks before overwriting each file that differs
(with --defaults and no terminal it stops at the first one, leaving the files before it written). Here:
- a DEST that exists and is not empty is refused before anything is asked;
- an answer that copier.yml refuses (an invalid project name, an empty selection, parts that do not fit)
  is one line, not copier's traceback (asked interactively, copier shows that line and asks again);
- the project is rendered into a temporary directory beside DEST and moved into place once complete:
  whatever fails, nothing half-written is left.
Exit status: 0 done, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROG = "new_project.py"


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def parse_data(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE pairs, as copier's --data takes them (copier parses each value by its question's type)."""
    data = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--data takes KEY=VALUE, got '{pair}'")
        data[key] = value
    return data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dest", type=Path, help="the new project's directory (absent or empty)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="an answer")
    parser.add_argument("--defaults", action="store_true", help="every question not answered: its default")
    parser.add_argument("--vcs-ref", default="HEAD", help="the template version to use (default: HEAD)")
    args = parser.parse_args(argv)

    dest = args.dest.expanduser().absolute()
    if dest.is_symlink() and not dest.exists():
        return fail(f"{dest} is a link that leads nowhere (broken, or a loop): give a new directory")
    if dest.exists() and not dest.is_dir():
        return fail(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        return fail(f"{dest} is not empty: give a new directory (nothing was written)")
    if not dest.parent.is_dir():
        return fail(f"{dest.parent} does not exist: make it first, or give another place")
    try:
        data = parse_data(args.data)
    except ValueError as err:
        return fail(str(err))

    from copier import run_copy
    from copier.errors import UserMessageError

    # Beside DEST (same filesystem: the final move is a rename), in a folder of DEST's name, which copier
    # offers as the project name.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        run_copy(
            str(REPO),
            staging / dest.name,
            data=data,
            defaults=args.defaults,
            vcs_ref=args.vcs_ref,
            cleanup_on_error=True,
        )
        if dest.is_dir():
            dest.rmdir()  # empty, as checked; it fails (and nothing moves) if something appeared meanwhile
        (staging / dest.name).rename(dest)
    except (ValueError, UserMessageError) as err:
        # copier's messages start with what failed ("Validation error for question 'tasks': ...").
        return fail(str(err).strip().splitlines()[-1] + " (nothing was written)")
    except OSError as err:
        return fail(f"{err} (nothing was written)")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{PROG}: created {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
