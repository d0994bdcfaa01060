"""Projects generated from this template with copier, for tests/test_generate.py and `make test-generated`.

copier copies a template's committed files (at --vcs-ref), so the template is first copied, as it is on
disk (committed or not, .gitignore'd files left out), into a throwaway git repository. A generated project
shares this checkout's virtual environment (a .venv symlink; make's install step is marked done with
`make -o`), so that its `make test` does not install torch again.

    python -m tests.generated                 # each project below: generate it, then its whole `make test`
    python -m tests.generated minimum         # one of them
    python -m tests.generated --differing minimum in_between   # only the tests that differ (CI)
    python -m tests.generated --single         # each task, model and dataset alone (SINGLE), once a set
    python -m tests.generated single-data-csv  # one of those

`--differing` runs, in a project, what the template's own suite has not already run on the same code: a
project's files are the template's (copier copies them, leaving parts out) but for the few it renders, so a
test with the same id in a test file the project did not change runs the same code on the same parts there.
It runs the tests whose id the template's suite does not have, and every test of a test file that differs;
and the whole suite when the project's default run (`python train.py --cfg job`) is not the template's,
since most of the loop's tests train that run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The environment the tests run in: this checkout's .venv under `make test`.
VENV = Path(sys.prefix).resolve()

# The projects CI generates and tests: every default, with the template's own name and description (so it
# is the template itself, but for the generator's files); the least (one task, one model, one dataset, no
# extras) on a run other than the template's default; and one in between, which keeps the template's
# default run but not every model and dataset its tests use beside it.
PROJECTS = {
    "everything": {
        "project_name": "pytorch-hydra-template",
        # Every task on disk, the worked examples too (copier's default leaves them out), in copier's order
        # of preference: the template's default first.
        "tasks": sorted(
            (p.stem for p in (REPO / "conf" / "task").glob("*.yaml")),
            key=lambda name: (f"task: {name}" not in (REPO / "conf" / "train.yaml").read_text(), name),
        ),
        "description": json.loads(
            re.search(r"^description = (.*)$", (REPO / "pyproject.toml").read_text(), re.M)[1]
        ),
    },
    "minimum": {
        "project_name": "minimum",
        "tasks": ["segmentation"],
        "models": ["unet"],
        "datasets": ["shapes"],
        "remote_tensorboard": False,
        "slurm": False,
        "optuna": False,
        "trackers": False,
        "github_actions": False,
        "pre_commit": False,
    },
    "in_between": {
        "project_name": "in-between",
        "description": "Digits and diabetes, with an MLP and a small CNN.",
        "author": "Ada Lovelace",
        "tasks": ["classification", "regression"],
        "models": ["mlp", "simple_cnn"],
        "datasets": ["digits", "fake", "mnist", "diabetes"],
        "remote_tensorboard": True,
        "slurm": False,
        "optuna": True,
        "trackers": True,
        "github_actions": True,
        "pre_commit": False,
    },
}


def single_part_projects() -> dict[str, dict]:
    """For each task, model and dataset on disk, the smallest answers that hold it (`single-model-unet`):
    that part, and the fewest companions that make copier take the answers (every task trained offline by
    a chosen dataset and model, every part fitting one of them), taken in copier's order of preference (the
    template's default first), with the tools off as in the minimum. A part added to conf/ has its own."""
    from tests.helpers import COMBOS, default_run, offline, options

    def preferred(group: str) -> list[str]:
        first = default_run()[group]
        return sorted(options(group), key=lambda name: (name != first, name))

    tasks, data, models = preferred("task"), preferred("data"), preferred("model")
    fits = set(COMBOS)  # reading the declarations again for each triple takes most of a minute
    triples = [(t, d, m) for t in tasks for d in data for m in models if (t, d, m) in fits]
    offline_data = [d for d in data if offline(d)]

    def trainable(t: str, d: str, m: str) -> dict | None:
        """The parts of a project that keeps these three: data that needs a download or the user's files
        trains nothing offline, so an offline dataset trains the task beside it (with the same model where
        one fits)."""
        offline_pairs = [(d2, m2) for d2 in offline_data for m2 in [m, *models] if (t, d2, m2) in fits]
        pair = (d, m) if d in offline_data else next(iter(offline_pairs), None)
        if pair is None:
            return None
        return {"tasks": [t], "models": sorted({m, pair[1]}), "datasets": sorted({d, pair[0]})}

    tools = {k: v for k, v in PROJECTS["minimum"].items() if isinstance(v, bool)}
    single = {}
    for group, place in (("task", 0), ("model", 2), ("data", 1)):  # place: in a (task, data, model)
        for name in preferred(group):
            found = [p for p in (trainable(*triple) for triple in triples if triple[place] == name) if p]
            if found:  # else a part that fits nothing: copier offers it, but no project can keep it
                smallest = min(found, key=lambda parts: sum(map(len, parts.values())))  # the first of those
                single[f"single-{group}-{name}"] = {
                    "project_name": f"single-{group}-{name}",
                    **smallest,
                    **tools,
                }
    return single


SINGLE = single_part_projects()


def distinct(projects: dict[str, dict]) -> list[str]:
    """The first name of each set of projects that keep the same parts (digits alone is the MLP alone):
    the one to generate and test for them all."""
    first = {}
    for name, answers in projects.items():
        first.setdefault(tuple(tuple(answers[q]) for q in ("tasks", "models", "datasets")), name)
    return list(first.values())


# What `make` and pytest pass to children through the environment: a generated project's own `make test`
# must not inherit the template's make variables (make puts the command line's in the environment too: CI's
# `make test TEST_MARKS=slow` would select only the project's slow tests), pytest options or xdist marks.
INHERITED = (
    *("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "HYDRA_FULL_ERROR"),
    *("EXTRAS", "VENV", "TEST_JOBS", "TEST_MARKS", "PYTEST_ARGS", "PROJECTS", "ARGS"),
    *("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"),
)


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(cmd: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    """A git command with a fixed identity (a CI runner has none); its stdout."""
    identity = [
        "-c",
        "user.name=template test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "commit.gpgsign=false",
    ]
    proc = run(["git", *identity, *args], cwd)
    assert proc.returncode == 0, f"git {' '.join(args)} in {cwd}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def template_repo(dest: Path) -> Path:
    """A git repository at dest whose one commit holds this checkout's files as they are on disk."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)
    assert listed.returncode == 0, listed.stderr
    for name in sorted(set(listed.stdout.split("\0")) - {""}):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "template as on disk")
    return dest


def copier(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The copier command line, as a user runs it (never interactive: stdin is closed)."""
    return subprocess.run(
        [PYTHON, "-m", "copier", *args],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def data_args(answers: dict) -> list[str]:
    """--data KEY=VALUE for each answer; lists and booleans as JSON, which copier reads as YAML."""
    args = []
    for key, value in answers.items():
        args += ["--data", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def generate(template: Path, dst: Path, answers: dict, ref: str = "HEAD") -> subprocess.CompletedProcess:
    """`copier copy` of the template at ref into dst, every question not in answers at its default."""
    return copier(
        "copy", "--defaults", "--quiet", "--vcs-ref", ref, *data_args(answers), str(template), str(dst)
    )


def link_venv(project: Path) -> None:
    """The project's .venv is this environment; its `make` is run with the install step marked done."""
    (project / ".venv").symlink_to(VENV, target_is_directory=True)


def make(project: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`make ARGS` in a generated project, on the shared environment (no pip install)."""
    return run(["make", "-o", ".venv/.installed-dev", "EXTRAS=dev", *args], project, timeout=timeout)


def collected(root: Path) -> list[str]:
    """The ids of the tests under root/tests, as pytest collects them there."""
    proc = run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"], root)
    assert proc.returncode == 0, (
        f"collecting the tests in {root}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line]


def default_run(root: Path) -> str:
    proc = run([PYTHON, "train.py", "--cfg", "job"], root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def differing(project: Path, template_ids: set[str]) -> list[str] | None:
    """The project's tests that the template's suite has not run on the same code (module docstring);
    None for all of them."""
    if default_run(project) != default_run(REPO):
        return None
    same_file = {
        path.relative_to(project).as_posix()
        for path in (project / "tests").rglob("*.py")
        if (REPO / path.relative_to(project)).is_file()
        and path.read_bytes() == (REPO / path.relative_to(project)).read_bytes()
    }
    return [i for i in collected(project) if i not in template_ids or i.split("::")[0] not in same_file]


def main(names: list[str]) -> int:
    only_differing = "--differing" in names
    names = [n for n in names if n != "--differing"]
    if "--single" in names:
        names = [n for n in names if n != "--single"] + distinct(SINGLE)
    known = {**PROJECTS, **SINGLE}
    unknown = sorted(set(names) - set(known))
    if unknown:
        print(f"tests.generated: error: unknown project {', '.join(unknown)} (known: {', '.join(known)})")
        return 2
    root = Path(tempfile.mkdtemp(prefix="generated-"))
    template = template_repo(root / "template")
    template_ids = set(collected(REPO)) if only_differing else set()
    failed = []
    for name in dict.fromkeys(names or PROJECTS):
        project = root / name
        start = time.perf_counter()
        made = generate(template, project, known[name])
        if made.returncode != 0:
            print(f"{name}: copier copy failed:\n{made.stdout}{made.stderr}")
            failed.append(name)
            continue
        link_venv(project)
        chosen = differing(project, template_ids) if only_differing else None
        if chosen is not None:  # pytest reads the ids from a file: an id can hold spaces
            (project / ".differing-tests").write_text("".join(f"{i}\n" for i in chosen))
            print(f"{name}: {len(chosen)} tests differ from the template's", flush=True)
        if chosen == []:  # nothing to run that the template did not: its lint still runs
            tested = make(project, "lint")
        else:
            # TEST_MARKS= : the slow tests too (`make test-all`), the project's whole suite or those that differ.
            tested = make(
                project, "test", "TEST_MARKS=", *(["PYTEST_ARGS=@.differing-tests"] if chosen else [])
            )
        seconds = time.perf_counter() - start
        if tested.returncode != 0:
            print(tested.stdout[-20000:] + tested.stderr[-5000:])
            print(f"{name}: make test FAILED in {project} ({seconds:.0f} s)")
            failed.append(name)
        else:
            summary = [line for line in tested.stdout.splitlines() if line.startswith("=") and " in " in line]
            print(f"{name}: make test passed in {seconds:.0f} s {summary[-1] if summary else ''}", flush=True)
    if failed:
        print(f"tests.generated: {', '.join(failed)} failed; the projects are under {root}")
        return 1
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
