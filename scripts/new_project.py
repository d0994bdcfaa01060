"""Start a new project from this checkout of the template: copier copy, with bad input refused in one line.

    python3 scripts/new_project.py ../my-project            # copier asks each question
    python3 scripts/new_project.py ../my-project --defaults --data tasks='[segmentation]' \\
        --data models='[unet]' --data datasets='[shapes]'

Any python3 will do: without copier it runs itself again with this checkout's .venv (`make install`
puts copier there), or says in one line how to get copier.

It runs `copier copy --vcs-ref HEAD <this checkout> DEST` (this checkout's files, committed or not; the
questions are in copier.yml), and adds what copier alone does not do. copier renders into a destination
that exists: it writes its files beside what is there and asks before overwriting each file that differs
(with --defaults and no terminal it stops at the first one, leaving the files before it written). Here:
- a DEST that exists and is not empty is refused before anything is asked;
- an answer that copier.yml refuses (an invalid project name, an empty selection, parts that do not fit),
  one that is not a question of copier.yml, not a YAML list where one is asked, or not a yes/no is one
  line, not copier's traceback (asked interactively, copier shows that line and asks again);
- the project name's default is DEST's folder name in ASCII (accents dropped: `ünï` gives `uni`);
- a name too long for the file system (DEST's folder, the project name) and a description or author with a
  control character (a carriage return, ESC, DEL: they would reach README.md and pyproject.toml) are refused
  in one line before copier runs, as copier.yml's validators refuse them when copier is run directly;
- the project is rendered into a temporary directory beside DEST, its pyproject.toml read back (a
  Unicode answer must give valid TOML), and moved into place once complete: whatever fails, nothing
  half-written is left.
Exit status: 0 done, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROG = "new_project.py"


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def find_copier(argv: list[str]) -> int | None:
    """None when copier can be imported here; else this script runs again with the checkout's .venv python
    (which `make install` gives copier), or an exit status after one line that says how to get it."""
    try:
        import copier  # noqa: F401
    except ImportError:
        pass
    else:
        return None
    venv = REPO / ".venv" / "bin" / "python"
    if venv.exists() and not os.environ.get("NEW_PROJECT_VENV"):  # once: that python may lack copier too
        os.environ["NEW_PROJECT_VENV"] = str(venv)
        os.execv(venv, [str(venv), __file__, *argv])  # does not return
    return fail(
        "copier is not installed for this python: `make install` here (this checkout's .venv gets it), "
        "or `pipx install copier`, or `python3 -m pip install copier`"
    )


def ascii_name(folder: str) -> str:
    """A project name from a folder's name: accents dropped (NFKD), other characters to '-'."""
    plain = unicodedata.normalize("NFKD", folder).encode("ascii", "ignore").decode()
    plain = re.sub(r"[^A-Za-z0-9._-]+", "-", plain)
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", plain) or "my-project"


def check_data(data: dict[str, str]) -> None:
    """An answer that copier would take wrongly or end in a traceback: a key that is no question, a
    selection that is not a YAML list, a yes/no that is neither. Raises ValueError with the line to show."""
    import yaml

    questions = {
        k: q for k, q in yaml.safe_load((REPO / "copier.yml").read_text()).items() if not k.startswith("_")
    }
    asked = sorted(k for k, q in questions.items() if q.get("when") is not False)
    for key, value in data.items():
        question = questions.get(key)
        if question is None or question.get("when") is False:
            raise ValueError(
                f"--data {key}: copier.yml asks no such question (its questions: {', '.join(asked)})"
            )
        if question.get("multiselect"):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
            if not isinstance(parsed, list):
                raise ValueError(f"--data {key}='{value}': give a YAML list, e.g. {key}='[a, b]'")
        if question.get("type") == "bool" and value.strip().lower() not in BOOLEANS:
            raise ValueError(f"--data {key}='{value}': give true or false")


BOOLEANS = {"true", "false", "yes", "no", "y", "n", "on", "off", "1", "0"}

# The project name is in the names of the files an install writes, with the version and tags added (pip's
# editable install: __editable___<name>_<version>_finder.py; a wheel: <name>-<version>-py3-none-any.whl),
# and a file name holds at most NAME_MAX bytes (255 on Linux's and macOS's file systems): 100 characters
# leave room for versions of up to about 130 characters. copier.yml's validator says the same.
MAX_NAME = 100
# Control characters (C0, DEL, C1: Unicode's category Cc): a carriage return or an escape sequence in a
# one-line answer would reach README.md and pyproject.toml as they are. copier.yml's validators say the same.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_answers(data: dict[str, str], dest: Path, defaults: bool) -> None:
    """What copier.yml's validators refuse, refused before copier runs (and before anything is written): a
    project name over MAX_NAME characters (given, or DEST's folder name taken as the default without asking),
    a control character in a one-line answer. Raises ValueError with copier.yml's line."""
    name = data.get("project_name", ascii_name(dest.name) if defaults else "")
    if len(name) > MAX_NAME:
        given = "" if "project_name" in data else " (the folder's name: give --data project_name=NAME)"
        raise ValueError(
            f"the project name '{name[:20]}...' is {len(name)} characters, at most {MAX_NAME}: it names the files "
            f"an install writes, with the version added, and a file name holds at most 255 bytes{given}"
        )
    for key in ("description", "author"):
        found = CONTROL.search(data.get(key, ""))
        if found:
            raise ValueError(
                f"the {key} holds a control character, {found.group()!r}, at character {found.start() + 1}: "
                "it is one line of printable text"
            )


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder` takes: NAME_MAX, 255 (Linux's and macOS's
    file systems) where it cannot say (the folder does not exist, or its own path is too long)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_written(project: Path) -> None:
    """Read the rendered pyproject.toml back, as pip would: a TOML error raises ValueError."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, as pip vendors it
        from pip._vendor import tomli as tomllib
    try:
        tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"the rendered pyproject.toml is not valid TOML ({err}): a template bug") from None


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
    # First: asking the system anything about a path with a name longer than it takes fails with a
    # traceback (ENAMETOOLONG). Each folder of the path, DEST's own name most likely.
    most = name_max(dest.parent)
    for part in dest.parts:
        if len(os.fsencode(part)) > most:
            return fail(
                f"the folder name '{part[:20]}...' is {len(os.fsencode(part))} bytes; a file name holds at most "
                f"{most} bytes (NAME_MAX): give a shorter one (nothing was written)"
            )
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
    if (status := find_copier(argv)) is not None:
        return status
    try:
        check_data(data)
        check_answers(data, dest, args.defaults)
    except ValueError as err:
        return fail(f"{err} (nothing was written)")

    from copier import run_copy

    # Beside DEST (same filesystem: the final move is a rename), in a folder of DEST's name, which copier
    # offers as the project name. The staging folder's own name is cut short: DEST's name may be as long as
    # a file name can be.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name[:32]}.", dir=dest.parent))
    try:
        run_copy(
            str(REPO),
            staging / dest.name,
            data=data,
            user_defaults={"project_name": ascii_name(dest.name)},
            defaults=args.defaults,
            vcs_ref=args.vcs_ref,
            cleanup_on_error=True,
        )
        check_written(staging / dest.name)
        if dest.is_dir():
            dest.rmdir()  # empty, as checked; it fails (and nothing moves) if something appeared meanwhile
        (staging / dest.name).rename(dest)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - whatever copier raises on an answer, one line
        # copier's messages end with what failed ("Validation error for question 'tasks': ...").
        lines = str(err).strip().splitlines() or [type(err).__name__]
        return fail(f"{lines[-1]} (nothing was written)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{PROG}: created {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
