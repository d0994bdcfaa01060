"""Project generation with copier (copier.yml), from a throwaway git copy of this checkout: copier offers
the parts on disk (a clone that adds one is offered it); the template's own answers give back the template
itself; each set of answers CI tries (tests/generated.py) gives a project with only what was chosen, docs
about only that, a short default run, and lint, test collection, config tests and default run that pass
here (its whole `make test`: `make test-generated`); `copier update` brings a later template version (its
newest tag) into a project its user changed, and a conflict is named; bad input is refused in one line,
with nothing written."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.generated import (
    PROJECTS,
    PYTHON,
    VENV,
    copier,
    data_args,
    generate,
    git,
    link_venv,
    make,
    run,
    template_repo,
)
from tests.helpers import REPO, declared, written

# In the template only: the generator, the template's CI entry point, and these tests.
TEMPLATE_ONLY = (
    "copier.yml",
    ".copier/",
    ".ci/",
    "scripts/new_project.py",
    "tests/test_generate.py",
    "tests/generated.py",
    "CHANGELOG.md",
)
# Files that a project keeps or leaves out by a yes/no question.
OPTIONAL = {
    "remote_tensorboard": [
        "scripts/serve_tb.sh",
        "scripts/serve_tb_session.sh",
        "scripts/serve_tb_remote.sh",
        "scripts/tunnel.sh",
        "tests/test_serve_tb.py",
        "tests/test_tb_browser.py",
    ],
    "slurm": ["conf/hydra/launcher/slurm.yaml"],
    "optuna": ["conf/hparams_search/digits_optuna.yaml"],
    "trackers": [
        "board/mlflow_tracker.py",
        "board/wandb_tracker.py",
        "docs/trackers.md",
        "tests/test_trackers.py",
    ],
    "github_actions": [".github/workflows/ci.yml"],
    "pre_commit": [".pre-commit-config.yaml"],
}
QUESTIONS = yaml.safe_load((REPO / "copier.yml").read_text())


def plain_defaults() -> dict:
    """copier.yml's defaults that are plain values (not computed from other answers)."""
    return {
        k: q["default"]
        for k, q in QUESTIONS.items()
        if not k.startswith("_") and q.get("when") is not False and "{%" not in str(q["default"])
    }


def answers_of(name: str) -> dict:
    """Every question's answer for a project of PROJECTS: its own, else copier.yml's default. (The tasks'
    default is every task on disk; the models' and datasets' are those that fit the chosen tasks: with
    every task, every one.)"""
    defaults = plain_defaults()
    if "models" not in PROJECTS[name]:  # "everything" names its tasks (the worked examples too), not these
        defaults |= {"tasks": shipped()["task"], "models": shipped()["model"], "datasets": shipped()["data"]}
    return {**defaults, **PROJECTS[name]}


def files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not {".git", ".venv", "__pycache__"} & set(p.relative_to(root).parts)
    }


def module_of(root: Path, group: str, name: str) -> str:
    """The source file a config builds from, by its _target_ (a data config's: dataset._target_)."""
    c = written(group, name, root / "conf")
    target = c["dataset"]["_target_"] if group == "data" else c["_target_"]
    return target.rsplit(".", 1)[0].replace(".", "/") + ".py"


def with_imports(root: Path, modules: set[str]) -> set[str]:
    """These source files and those of data/, models/, tasks/ and optim/ that they import, transitively (the
    rule of .copier/parts.jinja `_kept_modules_json`)."""
    found, todo = set(modules), list(modules)
    while todo:
        path = root / todo.pop()
        code = path.read_text() if path.is_file() else ""
        for name in re.findall(
            r"(?m)^[ \t]*(?:from|import)[ \t]+((?:data|models|tasks|optim)[.][\w.]+)", code
        ):
            file = name.replace(".", "/") + ".py"
            if file not in found:
                found.add(file)
                todo.append(file)
    return found


def parts_jinja(expression: str, root: Path = REPO):
    """A macro or variable of .copier/parts.jinja for the template at root, as copier's Jinja sees it
    (sandboxed, with the ansible filters, _copier_conf.src_path the template), read back as YAML."""
    import jinja2.sandbox

    env = jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(root),
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"],
    )
    name = re.split(r"[( ]", expression)[0]
    text = env.from_string(
        f"{{% from '.copier/parts.jinja' import {name} with context %}}{{{{ {expression} }}}}"
    ).render(_copier_conf={"src_path": str(root)})
    return yaml.safe_load(text)


def shipped(root: Path = REPO) -> dict:
    """The parts copier offers, by group (task, model, data, experiment), in its order of preference."""
    return parts_jinja("SHIPPED | tojson", root)


def offered(root: Path = REPO) -> dict:
    """copier.yml's choices for the tasks, models and datasets questions, as {label: value}."""
    return {group: dict(parts_jinja(f"choices('{group}')", root)) for group in ("task", "model", "data")}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return template_repo(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def projects(template, tmp_path_factory):
    """project(name): the project of PROJECTS[name], generated once, with this checkout's .venv."""
    made = {}

    def project(name: str) -> Path:
        if name not in made:
            dst = tmp_path_factory.mktemp("projects") / name
            proc = generate(template, dst, PROJECTS[name])
            assert proc.returncode == 0, proc.stdout + proc.stderr
            link_venv(dst)
            made[name] = dst
        return made[name]

    return project


# --- copier.yml against the files on disk -----------------------------------------------------------------


def test_the_choices_are_the_parts_on_disk_the_template_s_default_first():
    """copier.yml offers what conf/ holds (no list of parts anywhere): each group's files on disk, the
    one conf/train.yaml uses first, then alphabetical."""
    from tests.helpers import default_run, options

    lists, choices = shipped(), offered()
    for group in ("task", "model", "data", "experiment"):
        assert sorted(lists[group]) == options(group), f"copier offers {group}s that are not conf/{group}/"
    for group in ("task", "model", "data"):
        first = default_run()[group]
        assert lists[group] == [first, *sorted(set(options(group)) - {first})], group
        assert list(choices[group].values()) == lists[group], group
        assert all(label.startswith(f"{name}: ") for label, name in choices[group].items()), group
    for question in ("tasks", "models", "datasets"):
        assert "choices" in QUESTIONS[question] and "{%" in QUESTIONS[question]["choices"], question


def test_the_models_and_datasets_offered_are_those_that_fit_the_tasks(template, tmp_path):
    """Asked for one task only, the defaults are its models and its datasets (a default that did not fit
    would be refused as copier offers it)."""
    proc = generate(template, tmp_path / "lm", {"tasks": ["language_modeling"], "project_name": "lm"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = yaml.safe_load((tmp_path / "lm" / ".copier-answers.yml").read_text())
    assert (recorded["models"], recorded["datasets"]) == (["gpt"], ["pytext"])


def test_pre_commit_runs_the_ruff_of_the_dev_extra():
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    dev = re.search(r"^dev = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M)[1]
    ruff = re.search(r'"(ruff[^"]*)"', dev)[1]
    assert [h["additional_dependencies"] for h in hooks] == [[ruff], [ruff]]


# --- generated projects ------------------------------------------------------------------------------------


def test_the_template_s_own_answers_give_back_the_template(projects, template):
    """Every .jinja renders to the file beside it (the template's answers: everything, its own name), and
    every other file is copied as it is: the template is the project "everything", plus its generator."""
    project = projects("everything")
    ours = {f for f in files(template) if not f.startswith(TEMPLATE_ONLY) and not f.endswith(".jinja")}
    assert files(project) == ours | {".copier-answers.yml"}
    differ = sorted(
        f
        for f in ours - {"README.md", "Makefile", "docs/testing.md"}
        if (project / f).read_bytes() != (template / f).read_bytes()
    )
    assert not differ, f"generated with the template's answers, these differ from the template's: {differ}"
    # The Makefile but for its test-generated target, which runs this generator.
    assert (project / "Makefile").read_text() == without_test_generated((template / "Makefile").read_text())
    # README.md is the template's own (README.md.jinja is a project's short one): they agree on the docs.
    assert docs_listed(project / "README.md") == docs_listed(template / "README.md")
    # docs/testing.md but for its section on the generator's own tests.
    testing = (template / "docs" / "testing.md").read_text()
    generator = testing.index("\n## Generating projects (the template only)\n")
    assert (project / "docs" / "testing.md").read_text() == testing[:generator].rstrip("\n") + "\n"


def docs_listed(readme: Path) -> list[str]:
    """The pages of a README's "## Documentation" list, in its order."""
    text = readme.read_text()
    section = text[text.index("\n## Documentation\n") :].split("\n## ")[1]
    return re.findall(r"^- \[[^\]]*\]\((docs/[^)]+)\)", section, re.M)


def without_test_generated(makefile: str) -> str:
    """A Makefile without the test-generated target: its comment, rule and recipe, and its .PHONY entry."""
    lines = makefile.replace(" test-generated", "").split("\n")
    start = end = lines.index("test-generated: install")
    while lines[start - 1].startswith("#"):
        start -= 1
    while lines[end + 1].startswith("\t"):
        end += 1
    kept = "\n".join(lines[:start] + lines[end + 2 :])  # and the blank line after it
    assert "test-generated" not in kept
    return kept


@pytest.mark.parametrize("name", PROJECTS)
def test_a_project_has_what_was_chosen_and_nothing_else(projects, name):
    assert_has_what_was_chosen(projects(name), answers_of(name))


def assert_has_what_was_chosen(project: Path, answers: dict) -> None:
    """The project holds the parts answered and nothing else, a default run that fits, experiments that
    name only its parts, the optional files answered, and the answers recorded for `copier update`."""
    from_disk = {}
    for group, question in (("task", "tasks"), ("model", "models"), ("data", "datasets")):
        from_disk[group] = sorted(p.stem for p in (project / "conf" / group).glob("*.yaml"))
        assert from_disk[group] == sorted(answers[question]), group
        # The code of exactly those parts and what it imports: no other part's module (shared helpers such
        # as tasks/base.py, which no config builds, stay).
        modules = with_imports(project, {module_of(project, group, n) for n in from_disk[group]})
        folder = {"task": "tasks", "model": "models", "data": "data"}[group]
        parts = {
            module_of(REPO, group, n) for n in sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        }
        present = {f"{folder}/{p.name}" for p in (project / folder).glob("*.py")}
        assert present & parts == modules & parts, group
    for task in ("regression", "segmentation", "language_modeling"):  # each task's own tests go with it
        assert (project / "tests" / f"test_{task}.py").exists() == (task in answers["tasks"]), task
    # The default run is chosen parts that fit, with data that needs no download.
    defaults = {}
    for entry in yaml.safe_load((project / "conf" / "train.yaml").read_text())["defaults"]:
        defaults |= entry if isinstance(entry, dict) else {}
    t, d, m = (declared(g, defaults[g], project / "conf") for g in ("task", "data", "model"))
    assert d["input"] in m["input"] and m["output"] == t["output"] and d["target"] == t["target"], defaults
    assert d.get("source") == "builtin"
    # Each experiment kept names only parts the project has.
    for experiment in (project / "conf" / "experiment").glob("*.yaml"):
        for entry in yaml.safe_load(experiment.read_text())["defaults"]:
            for key, value in entry.items() if isinstance(entry, dict) else []:
                group = key.removeprefix("override /")
                assert (project / "conf" / group / f"{value}.yaml").exists(), (experiment.name, key, value)
    for question, paths in OPTIONAL.items():
        for path in paths:
            assert (project / path).exists() == answers[question], (question, path)
    extras = re.search(
        r"\[project.optional-dependencies\]\n(.*?)\n\n", (project / "pyproject.toml").read_text(), re.S
    )[1]
    assert re.findall(r"^(\w+) =", extras, re.M) == [
        "dev",
        *["sweep"] * answers["optuna"],
        *["slurm"] * answers["slurm"],
        "export",  # export.py ships with every project
        *["mlflow", "wandb"] * answers["trackers"],
        *["timm"] * ("timm" in answers["models"]),  # the extra of model=timm goes with it
    ]
    # What copier rendered holds no template syntax, and records the answers for `copier update`.
    for rendered in (
        f.removesuffix(".jinja") for f in files(REPO) if f.endswith(".jinja") and ".copier" not in f
    ):
        text = (project / rendered).read_text() if (project / rendered).exists() else ""
        assert not re.search(r"\{\{|\{%|\{#", text), rendered
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())

    def unordered(d: dict) -> dict:  # copier records a selection in the order of its choices
        return {k: sorted(d[k]) if isinstance(d[k], list) else d[k] for k in answers}

    assert unordered(recorded) == unordered(answers)
    assert recorded["_commit"]


@pytest.mark.parametrize("name", PROJECTS)
def test_a_project_s_readme_is_about_it(projects, name):
    project, answers = projects(name), answers_of(name)
    readme = (project / "README.md").read_text()
    assert readme.startswith(f"# {answers['project_name']}\n\n{answers['description']}\n")
    assert "make train" in readme and "make test" in readme
    named = set(re.findall(r"^\| `(\w+)` \|", readme, re.M))
    assert named == set(answers["tasks"])
    links = re.findall(r"\]\(([^)#\s]+)\)", readme)
    assert (
        "docs/tasks.md" in links and ("docs/remote_tensorboard.md" in links) == answers["remote_tensorboard"]
    )
    missing = [link for link in links if "://" not in link and not (project / link).exists()]
    assert not missing, missing
    # Its docs list names every page the project ships, each once.
    listed = docs_listed(project / "README.md")
    assert sorted(listed) == sorted(f"docs/{p.name}" for p in (project / "docs").glob("*.md")), listed


# The optimizer steps of the default run (`python train.py`, `make train`) of the project in the current
# directory: its composed config, and the length of the training split its data config builds.
DEFAULT_RUN_STEPS = """
import math
from pathlib import Path
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
with initialize_config_dir(config_dir=str(Path("conf").absolute()), version_base="1.3"):
    cfg = compose("train")
per_epoch = math.ceil(len(instantiate(cfg.data.dataset).train) / cfg.data.batch_size)
print(cfg.trainer.max_steps or cfg.trainer.max_epochs * per_epoch)
"""


def default_run_steps(root: Path) -> int:
    proc = run([PYTHON, "-c", DEFAULT_RUN_STEPS], root)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return int(proc.stdout.split()[-1])


@pytest.mark.parametrize("name", [n for n in PROJECTS if n != "everything"])  # that one is this checkout
def test_a_project_s_default_run_is_as_short_as_the_template_s(projects, name):
    """`make train` in a generated project takes about a minute, as the template's: its default run is no
    more optimizer steps than the template's own (a segmentation-only project trained 15 U-Net epochs, 945
    steps and some 7 minutes on 2 cores)."""
    assert default_run_steps(projects(name)) <= default_run_steps(REPO)


# What names the generator itself (a project has none of it), and each tool's commands.
GENERATOR_NAMES = ("make test-generated", "tests/generated.py", "test_generate.py", ".ci/run", "copier.yml")
TOOL_COMMANDS = {"optuna": ["hparams_search="], "slurm": ["hydra/launcher=slurm"], "remote_tensorboard": []}


@pytest.mark.parametrize("name", PROJECTS)
def test_a_project_s_docs_cover_only_its_parts(projects, template, name):
    """A project's docs/ name no file of a tool it left out and no command of one, nothing of the generator;
    testing.md lists only the test files it has; every relative link resolves; and unless it is the
    template itself, benchmarks.md and quality.md carry none of the template's measured numbers."""
    project, answers = projects(name), answers_of(name)
    pages = {p.name: p.read_text() for p in sorted((project / "docs").glob("*.md"))}
    lacking = [path for question, paths in OPTIONAL.items() if not answers[question] for path in paths]
    for page, text in pages.items():
        for path in lacking:
            assert path not in text and f"`{Path(path).name}`" not in text, (page, path)
        for question, commands in TOOL_COMMANDS.items():
            for command in commands if not answers[question] else []:
                assert command not in text, (page, command)
        for generator in GENERATOR_NAMES:
            assert generator not in text, (page, generator)
        for link in re.findall(r"\]\(([^)#\s]+)\)", text):
            assert "://" in link or (project / "docs" / link).exists(), (page, link)
    # The parts it lacks: no table row or list item starts with one, no command in a code block (but for
    # tasks.md's worked example) chooses one.
    have = {g: {p.stem for p in (project / "conf" / g).glob("*.yaml")} for g in shipped()}
    gone = {g: set(names) - have[g] for g, names in shipped().items()}
    for page, text in pages.items():
        for group, names in gone.items():
            for part in names:
                assert not re.search(rf"^(\| |- )`{part}`", text, re.M), (page, part)
                code = "\n".join(re.findall(r"^```.*?^```", text, re.M | re.S))
                if page != "tasks.md":
                    assert not re.search(rf"(^|[^\w./]){group}={part}($|[^\w])", code, re.M), (page, part)
    named = set(re.findall(r"`(test_\w+\.py)`", pages["testing.md"]))
    assert named and named <= {p.name for p in (project / "tests").glob("test_*.py")}
    assert "test_configs.py" in named
    for page in ("benchmarks.md", "quality.md"):
        ours = (template / "docs" / page).read_text()
        if answers["project_name"] == PROJECTS["everything"]["project_name"]:
            assert pages[page] == ours  # the template itself
        else:
            assert pages[page].splitlines()[2].startswith(f"Not measured for {answers['project_name']} yet.")
            numbers = set(re.findall(r"\d+\.\d+", ours))
            assert not numbers & set(re.findall(r"\d+\.\d+", pages[page])), page


@pytest.mark.parametrize("name", [n for n in PROJECTS if n != "everything"])
def test_a_project_s_bench_labels_name_what_they_run(projects, name):
    """The benchmark's default-run case names the project's own default model and data."""
    project = projects(name)
    defaults = {}
    for entry in yaml.safe_load((project / "conf" / "train.yaml").read_text())["defaults"]:
        defaults |= entry if isinstance(entry, dict) else {}
    code = "import sys; sys.path.insert(0, 'tools'); import bench; print(*(c.name for c in bench.cases_for('cpu', False).values()), sep='\\n')"
    proc = run([PYTHON, "-c", code], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"default run: {defaults['model']} on {defaults['data']}" in proc.stdout.splitlines(), proc.stdout


def test_make_quality_without_its_experiments_says_so(projects):
    """The in-between project keeps no experiment that has a quality target: `make quality` says so in
    one line and leaves its quality.md as generated."""
    project = projects("in_between")
    before = (project / "docs" / "quality.md").read_text()
    proc = make(project, "quality")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line for line in proc.stdout.splitlines() if not line.startswith(".venv/bin/python")]
    names = ", ".join(
        re.findall(r'^\s*Case\(\s*"(\w+)"', (project / "tools" / "quality.py").read_text(), re.M)
    )
    assert said == [f"quality.py: none of {names} is in conf/experiment/: nothing to do"]
    assert (project / "docs" / "quality.md").read_text() == before


# A quick run: a few validation and test batches.
SMOKE = ["debug=smoke", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]


def assert_quick_checks_pass(project: Path, runs: Path, tests: str, *overrides: str) -> None:
    """`make test` with a few of the project's tests (lint first), every test module collected, and a
    smoke run of train.py."""
    # One pytest process: this suite's own workers already keep the cores busy.
    tested = make(project, "test", "TEST_JOBS=0", f"PYTEST_ARGS=-q -p no:cacheprovider {tests}")
    assert tested.returncode == 0, tested.stdout[-5000:] + tested.stderr[-3000:]
    collected = run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], project)
    assert collected.returncode == 0, collected.stdout[-3000:]  # 2: a test module that cannot be imported
    smoke = run([PYTHON, "train.py", *SMOKE, *overrides, f"paths.output_root={runs}"], project)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert len(list(runs.glob("*/*/metrics.json"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PROJECTS if n != "everything"])  # that one is this checkout
def test_a_project_lints_collects_its_tests_and_trains_its_default_run(projects, name, tmp_path):
    """What `make test` checks of a project in seconds: lint, its config and docs-link tests, every test module imports
    (and nothing is skipped at collection), and the default run end to end. `make test-generated` runs
    each project's whole `make test`."""
    assert_quick_checks_pass(projects(name), tmp_path, "tests/test_configs.py tests/test_docs.py")


# A model and a dataset that a clone of the template adds beside tests/user_task/'s multi-label task: one
# .py and one .yaml each.
LINEAR_PY = '''"""A linear map over the flattened input: the least model there is."""

import math

from torch import nn


class Linear(nn.Sequential):
    def __init__(self, input_shape: list[int], num_outputs: int):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))
'''
LINEAR_YAML = """# @package _global_
# A linear map over the flattened input: the least model there is.
model:
  _target_: models.linear.Linear
  input_shape: ${data.input_shape}
  num_outputs: ${data.num_outputs}
declares:
  model: {input: [image, vector], output: vector}
"""
SIGNS_PY = '''"""Random feature vectors labelled with the signs of their first four features: multi-label data."""

import torch
from torch.utils.data import TensorDataset

from data.splits import Splits


def signs(num_samples: int, seed: int) -> Splits:
    x = torch.randn(num_samples, 8, generator=torch.Generator().manual_seed(seed))
    y = (x[:, :4] > 0).float()
    n = num_samples // 5
    train, val, test = (TensorDataset(x[i], y[i]) for i in (slice(2 * n, None), slice(n), slice(n, 2 * n)))
    return Splits(train, val, test)
'''
SIGNS_YAML = """# Random feature vectors labelled with the signs of their first four features; no download.
dataset:
  _target_: data.signs.signs
  num_samples: 1000
  seed: ${trainer.seed}
declares: {input: vector, target: multilabel, source: builtin}
input_shape: [8]
num_labels: 4
num_outputs: ${data.num_labels}
batch_size: 32
num_workers: 0
"""


@pytest.mark.slow
def test_a_task_model_and_dataset_added_to_a_clone_are_offered_and_generated(tmp_path):
    """A clone that adds a task, a model and a dataset (one .py and one .yaml each, no list edited)
    offers them in copier's questions, keeps them by default, and generates a project of only them that
    holds what was chosen and trains its default run."""
    clone = template_repo(tmp_path / "clone")
    user_task = REPO / "tests" / "user_task"
    added = {
        "tasks/multilabel.py": (user_task / "multilabel.py").read_text(),
        "conf/task/multilabel.yaml": (user_task / "multilabel.yaml").read_text(),
        # The same task as a worked example: offered, not chosen by default.
        "conf/task/multilabel_example.yaml": (user_task / "multilabel.yaml")
        .read_text()
        .replace("output: vector}", "output: vector, worked_example: true}"),
        "data/signs.py": SIGNS_PY,
        "conf/data/signs.yaml": SIGNS_YAML,
        "models/linear.py": LINEAR_PY,
        "conf/model/linear.yaml": LINEAR_YAML,
    }
    for path, text in added.items():
        assert not (clone / path).exists(), f"{path} ships already: this proves nothing"
        (clone / path).write_text(text)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "a new task, model and dataset")

    choices = offered(clone)
    for group, name in (
        ("task", "multilabel"),
        ("task", "multilabel_example"),
        ("model", "linear"),
        ("data", "signs"),
    ):
        assert name in choices[group].values(), (group, choices[group])
        assert shipped(clone)[group][0] == shipped()[group][0], group  # the template's default stays first

    # Every default: the new parts are kept beside the shipped ones.
    everything = tmp_path / "everything"
    made = generate(clone, everything, {"project_name": "everything"})
    assert made.returncode == 0, made.stdout + made.stderr
    recorded = yaml.safe_load((everything / ".copier-answers.yml").read_text())
    assert "multilabel" in recorded["tasks"] and "linear" in recorded["models"], recorded
    assert "multilabel_example" not in recorded["tasks"], recorded
    assert "signs" in recorded["datasets"], recorded
    assert_has_what_was_chosen(everything, {**plain_defaults(), **recorded})

    # Only the new parts: a project of them alone, whose default run they are.
    answers = {
        **plain_defaults(),
        "project_name": "multilabel",
        "tasks": ["multilabel"],
        "models": ["linear"],
        "datasets": ["signs"],
    }
    project = tmp_path / "multilabel"
    made = generate(clone, project, answers)
    assert made.returncode == 0, made.stdout + made.stderr
    assert_has_what_was_chosen(project, answers)
    link_venv(project)
    assert_quick_checks_pass(project, tmp_path / "runs", "tests/test_configs.py")


# --- copier update -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_update_merges_a_later_template_into_a_project_its_user_changed(template, tmp_path):
    """A project from one template commit, changed by its user (a model and a config) and committed; the
    template changes other files in a later commit; `copier update` brings both together, and the project
    still works. A later template change to the very line the user changed shows as a merge conflict."""
    source = tmp_path / "template"
    git(tmp_path, "clone", "-q", str(template), str(source))
    project = tmp_path / "project"
    project.mkdir()  # an empty destination is fine
    made = new_project(source, project, PROJECTS["in_between"])
    assert made.returncode == 0, made.stdout + made.stderr
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "generated")

    # The user's change: a wider CNN by default, and their own words in its code.
    cnn_yaml, cnn_py = project / "conf" / "model" / "simple_cnn.yaml", project / "models" / "simple_cnn.py"
    cnn_yaml.write_text(cnn_yaml.read_text().replace("  width: 32\n", "  width: 48\n"))
    cnn_py.write_text(
        cnn_py.read_text().replace('"""Two conv blocks', '"""Ours, kept by updates: two conv blocks')
    )
    git(project, "commit", "-q", "-am", "wider cnn")

    # The template's later change, to other files.
    for name in ("optimizer/adamw.yaml", "scheduler/cosine.yaml"):
        path = source / "conf" / name
        path.write_text(path.read_text() + "# A later template change.\n")
    git(source, "commit", "-q", "-am", "template: later change")
    later = git(source, "rev-parse", "HEAD")

    updated = copier("update", "--defaults", "--quiet", "--vcs-ref", later, cwd=project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "  width: 48\n" in cnn_yaml.read_text() and '"""Ours, kept by updates' in cnn_py.read_text()
    for name in ("optimizer/adamw.yaml", "scheduler/cosine.yaml"):
        assert (project / "conf" / name).read_text().endswith("# A later template change.\n"), name
    assert later.startswith(yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"])
    assert not run(["git", "grep", "-n", "-e", "^<<<<<<<", "-e", "^>>>>>>>"], project).stdout
    link_venv(project)
    assert_quick_checks_pass(
        project, tmp_path / "runs", "tests/test_configs.py -k simple_cnn", "model=simple_cnn"
    )

    # Both change the same line: an ordinary merge conflict, with both sides, for the user to resolve.
    (project / ".venv").unlink()  # copier updates a clean git tree only
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "update to the later template")
    template_yaml = source / "conf" / "model" / "simple_cnn.yaml"
    template_yaml.write_text(template_yaml.read_text().replace("  width: 32\n", "  width: 64\n"))
    git(source, "commit", "-q", "-am", "template: wider cnn too")
    conflicting = copier(
        "update", "--defaults", "--quiet", "--conflict", "inline", "--vcs-ref", "HEAD", cwd=project
    )
    assert conflicting.returncode == 0, conflicting.stdout + conflicting.stderr
    text = cnn_yaml.read_text()
    assert re.search(r"^<<<<<<< .*\n  width: 48\n=======\n  width: 64\n>>>>>>> ", text, re.M), text
    # copier says nothing of it (exit 0): the project's own check lists the file, and train.py stops in one
    # line instead of YAML's traceback.
    check = run([PYTHON, "-m", "setup.conflicts"], project)
    assert check.returncode == 1 and "conf/model/simple_cnn.yaml:" in check.stdout, (
        check.stdout + check.stderr
    )
    stopped = run([PYTHON, "train.py"], project)
    assert stopped.returncode == 2 and len(stopped.stderr.splitlines()) == 1, stopped.stderr
    assert "conf/model/simple_cnn.yaml:" in stopped.stderr and "unresolved merge conflict" in stopped.stderr


@pytest.mark.slow
def test_update_takes_the_template_s_newest_version_tag(template, tmp_path):
    """`copier update` with no --vcs-ref brings a project to the template's newest vX.Y.Z tag, not to a
    later untagged commit. (A template repository of its own, tagged here: a fresh clone of this one in
    CI has no tags.)"""
    source = tmp_path / "template"
    git(tmp_path, "clone", "-q", str(template), str(source))
    git(source, "tag", "-a", "v0.1.0", "-m", "v0.1.0")
    adamw = source / "conf" / "optimizer" / "adamw.yaml"
    adamw.write_text(adamw.read_text() + "# Released in v0.2.0.\n")
    git(source, "commit", "-q", "-am", "a change released in v0.2.0")
    git(source, "tag", "-a", "v0.2.0", "-m", "v0.2.0")
    adamw.write_text(adamw.read_text() + "# Not released yet.\n")
    git(source, "commit", "-q", "-am", "a change not released yet")

    project = tmp_path / "project"
    made = generate(source, project, PROJECTS["minimum"], ref="v0.1.0")
    assert made.returncode == 0, made.stdout + made.stderr
    answers = project / ".copier-answers.yml"
    assert yaml.safe_load(answers.read_text())["_commit"] == "v0.1.0"
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "generated")

    updated = copier("update", "--defaults", "--quiet", cwd=project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert yaml.safe_load(answers.read_text())["_commit"] == "v0.2.0"
    text = (project / "conf" / "optimizer" / "adamw.yaml").read_text()
    assert text.endswith("# Released in v0.2.0.\n"), text


def test_the_changelog_has_dated_versions_newest_first():
    """CHANGELOG.md: one `## X.Y.Z — DATE` heading a version (the next one may say unreleased), newest
    first, and the release step (a vX.Y.Z tag) written down."""
    text = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\d+)\.(\d+)\.(\d+) — (?:unreleased \()?(\d{4}-\d{2}-\d{2})\)?$", text, re.M)
    headings = re.findall(r"^## .*$", text, re.M)
    assert len(versions) == len(headings) >= 2, headings
    numbers = [tuple(map(int, v[:3])) for v in versions]
    assert numbers == sorted(numbers, reverse=True) and [v[3] for v in versions] == sorted(
        (v[3] for v in versions), reverse=True
    )
    assert "git tag -a vX.Y.Z" in text


# --- bad input ---------------------------------------------------------------------------------------------

BAD_ANSWERS = {
    "an invalid name": ({"project_name": "my project!"}, "is not a valid project name"),
    "no task": ({"tasks": []}, "choose at least one task"),
    "a task no model fits": (
        {"tasks": ["segmentation"], "models": ["mlp"]},
        "task segmentation has no chosen model",
    ),
    "a task without offline data": (
        {"tasks": ["classification"], "models": ["mlp"], "datasets": ["cifar10"]},
        "task classification has no chosen dataset",
    ),
    "a model no task uses": (
        {"tasks": ["classification"], "models": ["mlp", "gpt"], "datasets": ["digits"]},
        "model gpt fits none of the chosen tasks",
    ),
    # Before these checks: accepted (the name), or written into README.md and pyproject.toml as they are.
    "a name too long for a file name": (
        {"project_name": "a" * 101},
        "is 101 characters, at most 100: it names",
    ),
    "a carriage return in the description": (
        {"description": "one\rtwo"},
        "the description holds a control character, '\\r', at character 4: it is one line of printable text",
    ),
    "an escape sequence in the description": (
        {"description": "red \x1b[31m text"},
        "the description holds a control character, '\\x1b', at character 5",
    ),
    "DEL in the description": ({"description": "del\x7f"}, "control character, '\\x7f', at character 4"),
    "a tab in the author": (
        {"author": "Jo\tSmith"},
        "the author holds a control character, '\\t', at character 3",
    ),
}


def new_project(template: Path, dst: Path, answers: dict):
    """scripts/new_project.py of the template (copier, plus the checks copier lacks), non-interactive."""
    script = template / "scripts" / "new_project.py"
    return run([PYTHON, str(script), str(dst), "--defaults", *data_args(answers)], dst.parent)


@pytest.mark.parametrize("answers, message", BAD_ANSWERS.values(), ids=BAD_ANSWERS)
def test_bad_answers_are_refused_in_one_line_with_nothing_written(template, tmp_path, answers, message):
    proc = new_project(template, tmp_path / "new", answers)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no directory, no staging left
    # copier itself refuses the same before writing anything (with its traceback above the line).
    direct = generate(template, tmp_path / "direct", answers)
    assert direct.returncode != 0 and message in direct.stderr.splitlines()[-1]
    assert not (tmp_path / "direct").exists()


# What copier itself takes wrongly (a yes/no of "maybe", a question that does not exist) or ends in its
# traceback (a selection that is not a list): new_project.py refuses each in one line.
BAD_DATA = {
    "a selection that is not a list": ({"tasks": "classification"}, "give a YAML list, e.g. tasks='[a, b]'"),
    "a list cut short": ({"tasks": "[classification"}, "give a YAML list"),
    "no such question": ({"colour": "red"}, "--data colour: copier.yml asks no such question"),
    "a yes/no that is neither": ({"slurm": "maybe"}, "--data slurm='maybe': give true or false"),
}


@pytest.mark.parametrize("answers, message", BAD_DATA.values(), ids=BAD_DATA)
def test_bad_data_is_refused_in_one_line_with_nothing_written(template, tmp_path, answers, message):
    proc = new_project(template, tmp_path / "new", answers)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unicode_answers_and_folder_name_give_a_valid_pyproject(template, tmp_path):
    """An emoji, quotes and a backslash in the answers: pyproject.toml still reads back (tomllib, as pip
    reads it) with the very text answered; a folder named in another script gives an ASCII default name.
    (Control characters, DEL among them, are refused: BAD_ANSWERS.)"""
    import tomllib

    answers = {k: v for k, v in PROJECTS["minimum"].items() if k != "project_name"}
    answers |= {"author": "Jo 🚀 Smith", "description": 'Ünïcode "quoted" \\ back slash 𝄞'}
    dst = tmp_path / "ünï"
    proc = new_project(template, dst, answers)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    project = tomllib.loads((dst / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "uni"
    assert project["authors"] == [{"name": "Jo 🚀 Smith"}]
    assert project["description"] == answers["description"]


def test_new_project_runs_with_a_plain_python3(template, tmp_path):
    """A python3 without copier: with no .venv in the checkout, one line says how to get copier; with the
    .venv that `make install` leaves (copier in its dev extra), the script runs itself with that."""
    python = getattr(sys, "_base_executable", None) or sys.executable
    script = template / "scripts" / "new_project.py"
    args = [python, "-S", str(script), str(tmp_path / "new"), "--defaults", *data_args(PROJECTS["minimum"])]
    assert run([python, "-S", "-c", "import copier"], tmp_path).returncode == 1  # no copier there
    proc = run(args, tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert "copier is not installed for this python: `make install` here" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # The checkout's .venv/bin/python (ignored by git: copier never sees it), here a stand-in for this venv's.
    venv_python = template / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec "{VENV / "bin" / "python"}" "$@"\n')
    venv_python.chmod(0o755)
    try:
        proc = run(args, tmp_path)
    finally:
        shutil.rmtree(template / ".venv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "new" / "pyproject.toml").exists()


def test_a_destination_that_is_not_empty_is_refused_and_left_as_it_was(template, tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine\n")
    proc = new_project(template, dst, PROJECTS["minimum"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "is not empty" in proc.stderr
    assert files(dst) == {"notes.txt"} and (dst / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("target", ["loop", "missing/dir"])
def test_a_destination_that_is_a_dangling_link_is_refused_in_one_line(template, tmp_path, target):
    dst = tmp_path / "loop"
    dst.symlink_to(target)  # "loop" points at itself
    proc = new_project(template, dst, PROJECTS["minimum"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "is a link that leads nowhere" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"] and dst.is_symlink()


def test_a_folder_name_too_long_is_refused_in_one_line_before_anything_is_written(template, tmp_path):
    """A 250-character folder name was an OSError traceback (the staging folder beside it, named after it,
    passed NAME_MAX); as the default project name it is too long too. 256 bytes is no file name at all."""
    unnamed = {k: v for k, v in PROJECTS["minimum"].items() if k != "project_name"}
    proc = new_project(template, tmp_path / ("a" * 250), unnamed)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert "is 250 characters, at most 100" in proc.stderr and "give --data project_name=NAME" in proc.stderr
    # copier itself refuses the folder's name as the default name.
    direct = generate(template, tmp_path / ("b" * 250), {})
    assert direct.returncode != 0 and "is 250 characters, at most 100" in direct.stderr.splitlines()[-1]
    proc = new_project(template, tmp_path / ("é" * 128), PROJECTS["minimum"])  # 128 characters, 256 bytes
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert "is 256 bytes; a file name holds at most 255 bytes (NAME_MAX)" in proc.stderr
    script, above = (
        template / "scripts" / "new_project.py",
        tmp_path / ("d" * 300) / "new",
    )  # a folder above it
    proc = run([PYTHON, str(script), str(above), "--defaults"], tmp_path)
    assert proc.returncode == 2 and "is 300 bytes; a file name holds at most 255" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # 255 bytes is a file name: the project is made there, with a name of its own.
    proc = new_project(template, tmp_path / ("c" * 255), PROJECTS["minimum"] | {"project_name": "short"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c" * 255]


@pytest.mark.slow
def test_the_three_pairing_rules_agree_on_every_triple_a_fork_s_too(tmp_path):
    """tests/helpers.py `compatible`, copier's `_fits` (.copier/parts.jinja) and the check before training
    (setup/parts.py `check_declared`) pair the same task x data x model, over the parts on disk and a fork's
    dict-batch parts (tests/dict_fork/conf) beside them: words, batch layout and the data keys read."""
    from omegaconf import OmegaConf

    from setup.config import ConfigError
    from setup.parts import check_declared
    from tests.helpers import compatible, declared, options, written

    root = tmp_path / "template"
    shutil.copytree(REPO / ".copier", root / ".copier")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copytree(REPO / "tests" / "dict_fork" / "conf", root / "conf", dirs_exist_ok=True)
    conf = root / "conf"

    def checked(t, d, m) -> bool:
        cfg = OmegaConf.create({
            "task": written("task", t, conf), "model": written("model", m, conf), "data": written("data", d, conf),
            "declares": {"task": declared("task", t, conf), "model": declared("model", m, conf)},
        })  # fmt: skip
        try:
            check_declared(cfg)
        except ConfigError:
            return False
        return True

    tasks, data, models = options("task", conf), options("data", conf), options("model", conf)
    pairs = set()
    for t in tasks:
        for m in models:
            fitting = parts_jinja(f"fitting_datasets(['{t}'], ['{m}'])", root)
            for d in data:
                rule = compatible(t, d, m, conf)
                assert rule == (d in fitting) == checked(t, d, m), (t, d, m)
                pairs |= {(t, d, m)} if rule else set()
    # The fork's dict batches pair only with its dict-reading task; gpt only with data that has a block size.
    assert {(t, m) for t, d, m in pairs if d == "two_inputs"} == {("dict_classification", "two_branch")}
    assert all("block_size" in written("data", d, conf) for _, d, m in pairs if m == "gpt")


def test_a_project_of_one_part_keeps_the_modules_that_part_imports(tmp_path):
    """A clone adds a dataset whose module imports another dataset's (`from data.digits import digits`);
    a project of that dataset alone (no `digits`) keeps data/digits.py, found in the code's imports, and
    leaves out conf/data/digits.yaml and the modules nothing kept imports."""
    clone = template_repo(tmp_path / "clone")
    user_task = REPO / "tests" / "user_task"
    for name, folder in (("digit_attributes", "data"), ("multilabel", "tasks")):
        group = "data" if folder == "data" else "task"
        shutil.copy(user_task / f"{name}.py", clone / folder / f"{name}.py")
        shutil.copy(user_task / f"{name}.yaml", clone / "conf" / group / f"{name}.yaml")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "a dataset that imports another's module")
    answers = {**plain_defaults(), "project_name": "attributes", "tasks": ["multilabel"], "models": ["mlp"],
               "datasets": ["digit_attributes"]}  # fmt: skip
    project = tmp_path / "attributes"
    made = generate(clone, project, answers)
    assert made.returncode == 0, made.stdout + made.stderr
    assert (project / "data" / "digits.py").is_file() and not (
        project / "conf" / "data" / "digits.yaml"
    ).exists()
    assert not (project / "data" / "shapes.py").exists() and not (project / "models" / "gpt.py").exists()
    imported = run([PYTHON, "-c", "import data.digit_attributes, tasks.multilabel"], project)
    assert imported.returncode == 0, imported.stderr


# Imports every module of each project named on the command line (its packages' modules, tests/ aside, and
# its entry points), each project in a fork of this one process, which has imported the template's first:
# torch, hydra and the rest are imported once for all, and in each fork the project's modules are its own
# (the template's are dropped from sys.modules). Prints a traceback for each module that does not import.
IMPORT_EVERY_MODULE = """
import importlib, os, sys, traceback
from pathlib import Path

def modules(root):
    names = [p.stem for p in sorted(root.glob("*.py"))]
    for package in sorted(p.parent for p in root.glob("*/__init__.py") if p.parent.name != "tests"):
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names

template = Path.cwd()
sys.path.insert(0, str(template))
own = modules(template)
for name in own:
    importlib.import_module(name)
# The template's own modules, by name: not by file, since a checkout's .venv (torch) lies under it too.
tops = {name.split(".")[0] for name in own}
for root in map(Path, sys.argv[1:]):
    pid = os.fork()
    if pid == 0:
        for name in list(sys.modules):
            if name.split(".")[0] in tops:
                del sys.modules[name]
        sys.path[0] = str(root)
        os.chdir(root)
        failed = 0
        for name in modules(root):
            try:
                importlib.import_module(name)
            except BaseException:
                failed = 1
                print(f"{root.name}: import {name}:\\n{traceback.format_exc()}", flush=True)
        os._exit(failed)
    status = os.waitpid(pid, 0)[1]
    if status:
        print(f"{root.name}: importing its modules ended with wait status {status}", flush=True)
"""


@pytest.mark.slow
def test_a_project_of_each_single_part_generates_imports_its_modules_and_composes_its_default_run(
    template, tmp_path
):
    """Each set of answers of tests/generated.py SINGLE (every task, model and dataset on disk, with the
    fewest companions copier takes) generates a project that holds what was chosen, in which every module
    imports and `python train.py --cfg job` composes the default run. A set that several parts share (digits
    alone is the MLP alone) is generated once. `make test-generated PROJECTS=--single` runs their tests."""
    from tests.generated import SINGLE, distinct

    problems = []
    for name in distinct(SINGLE):
        project = tmp_path / name
        made = generate(template, project, SINGLE[name])
        if made.returncode != 0:
            problems.append(f"{name}: copier copy failed:\n{made.stdout}{made.stderr}")
            continue
        assert_has_what_was_chosen(project, {**plain_defaults(), **SINGLE[name]})
        composed = run([PYTHON, "train.py", "--cfg", "job"], project)
        if composed.returncode != 0 or "model" not in (yaml.safe_load(composed.stdout) or {}):
            problems.append(f"{name}: python train.py --cfg job:\n{composed.stdout}{composed.stderr[-3000:]}")
    built = [str(tmp_path / name) for name in distinct(SINGLE) if (tmp_path / name).is_dir()]
    imported = run([PYTHON, "-c", IMPORT_EVERY_MODULE, *built], REPO)
    if imported.returncode != 0 or imported.stdout:
        problems.append(f"importing every module:\n{imported.stdout[-5000:]}{imported.stderr[-3000:]}")
    assert not problems, "\n".join(problems)
