"""Shared by the tests: compose the real configs, train for real on small slices, read event files back."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PYTHON = sys.executable

# A real run, shrunk: one epoch of three small batches, plain log lines instead of a bar.
FAST = ["trainer.max_epochs=1", "trainer.limit_batches=3", "data.batch_size=32", "logging.progress_bar=false"]


def runnable(*extra: str) -> list[str]:
    """What a copy of the project needs to run: the entry points, its configs and every package on disk (the
    template's own floors and the parts), read from the checkout rather than listed."""
    packages = sorted(p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests")
    return ["train.py", "eval.py", "predict.py", "export.py", "pyproject.toml", "conf", *packages, *extra]


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config exactly as `python train.py <overrides>` would see it, with its run dir at run_dir."""
    from store.rundir import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task's config holds no hydra node
    return cfg


def train_in_process(overrides: list[str], run_dir: Path) -> float:
    """Train through Hydra's compose API (no subprocess): fast, and failures show a real traceback."""
    import logging

    import train
    from life.run import RunLife

    cfg = compose_config(overrides, run_dir)
    write_run_config(cfg, run_dir)
    life = RunLife("train.py", logging.getLogger("train"))  # entered by hand: errors keep their tracebacks
    try:
        return train.train(cfg, life).best
    finally:
        life.release()


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """.hydra/config.yaml, as `python train.py` has Hydra write it (unresolved): resume checks against it."""
    from omegaconf import OmegaConf

    if not cfg.get("resume") and not (run_dir / ".hydra" / "config.yaml").exists():
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def run_cli(
    args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 300, script: str = "train.py"
):
    """`python train.py ARGS` (or eval.py) as a user types it; returns the CompletedProcess (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [PYTHON, str(REPO / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def event_accumulator(run_dir: Path):
    """TensorBoard's own reader over the run's tb/ directory, fully loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(run_dir / "tb" / "events.out.tfevents.*"))
    assert files, f"no event file under {run_dir / 'tb'}"
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def require_extra(module: str, extra: str) -> None:
    """Skip a test whose optional extra (pyproject) is not installed; fail instead under REQUIRE_E2E=1,
    as in CI, which installs every extra (.ci/run)."""
    import importlib.util

    import pytest

    try:  # a dotted name whose parent package is missing raises instead of returning None
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return
    if os.environ.get("REQUIRE_E2E") == "1":
        pytest.fail(f"{module} is missing, and REQUIRE_E2E=1 requires it (pip install -e '.[{extra}]')")
    pytest.skip(f"{module} is missing: pip install -e '.[{extra}]'")


# --- The shipped configs, read from disk: a fork that adds or deletes one needs no edit here ---------------


def options(group: str, conf: Path = CONF) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def written(group: str, name: str, conf: Path = CONF) -> dict:
    """A part's config as written (interpolations unresolved), as its group's node: a `# @package _global_`
    file (the model and task configs) holds it under the group's key, beside its `declares`."""
    from omegaconf import OmegaConf

    path = conf / group / f"{name}.yaml"
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return tree.get(group, {}) if is_global(path) else tree


def is_global(path: Path) -> bool:
    """Whether a config file is a `# @package _global_` one: that header as its first line (Hydra reads
    package headers only before the file's first other line, comment or not)."""
    import re

    first = next((line for line in path.read_text().splitlines() if line.strip()), "")
    return re.fullmatch(r"\s*#\s*@package\s+_global_\s*", first) is not None


def declared(group: str, name: str, conf: Path = CONF) -> dict:
    """What a part declares it takes and gives, as written: a model's or task's `declares.<group>` (nothing
    for a plain file without one); a data config's `declares` (input, target, source, example) inside its
    own node (the data node is never instantiated whole), or, in an older data config, its own keys."""
    from omegaconf import OmegaConf

    if group == "data":
        node = written(group, name, conf)
        return node.get("declares") or node
    path = conf / group / f"{name}.yaml"
    if not is_global(path):
        return {}
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return (tree.get("declares") or {}).get(group) or {}


def data_keys_read(group: str, name: str, conf: Path = CONF) -> set[str]:
    """The data keys a model or task config reads (`${data.block_size}` in its node): what it needs from the
    data it is paired with."""
    import json
    import re

    return set(re.findall(r"\$\{data\.(\w+)", json.dumps(written(group, name, conf))))


def compatible(task: str, data: str, model: str, conf: Path = CONF) -> bool:
    """Whether the configs' declarations pair up: the data's input is one the model takes, the model's
    output is the shape the task reads, the data's target is the task's, the data's batch layout is the one
    the task reads (`batch`, by default `tuple`), and the data config has every key the task and the model
    read from it. The same rule as setup/parts.py `check_declared` and .copier/parts.jinja `_fits`."""
    t, d, m = declared("task", task, conf), declared("data", data, conf), declared("model", model, conf)
    inputs = m.get("input") or []
    return (
        d.get("input") in inputs
        and m.get("output") == t.get("output")
        and d.get("target") == t.get("target")
        and d.get("batch", "tuple") == t.get("batch", "tuple")
        and data_keys_read("task", task, conf) | data_keys_read("model", model, conf)
        <= set(written("data", data, conf))
    )


def offline(data: str, conf: Path = CONF) -> bool:
    """Data that needs no download and no files of the user's: its config declares `source: builtin`
    (download and files are trained on their `example` instead: tests/test_file_data.py)."""
    return declared("data", data, conf).get("source") == "builtin"


def write_example(data: str, directory: Path, conf: Path = CONF) -> list[str] | None:
    """Call the data config's `example` (a dotted function name): it writes a small example of the data's
    files into `directory` and returns the overrides that point the config at it. None: it declares none."""
    import importlib

    name = declared("data", data, conf).get("example")
    if not name:
        return None
    module, _, function = name.rpartition(".")
    return list(getattr(importlib.import_module(module), function)(directory))


def experiment_inputs(experiment: str, directory: Path) -> tuple[list[str], dict[str, str]]:
    """What an experiment needs from outside the checkout, made up under `directory`: its data's example
    files, when its data reads files (the overrides that point at them), and a pretrained model's weights
    in a local cache (tests/pretrained_cache.py: the environment that finds them). Nothing for most."""
    from tests.pretrained_cache import pretrained_env

    cfg = compose_config([f"experiment={experiment}"], directory / "composed")
    data = HydraConfig.get().runtime.choices["data"]
    overrides = [] if offline(data) else write_example(data, directory / "files") or []
    return overrides, pretrained_env(cfg, directory / "weights")


def build_run(
    task: str,
    data: str,
    model: str,
    directory: Path,
    overrides=(),
    rank: int = 0,
    world_size: int = 1,
    conf=CONF,
):
    """The parts of a run of these three as train.py builds them, on the CPU: its config (the data's example
    files written under `directory` where it reads files), the splits, the task, the model (seeded) and the
    loaders of this rank, whose batches are the data's own (its collate, dict samples, token ids). None for
    data with neither builtin samples nor an `example` to write. A test takes its inputs from these batches,
    never from a declared shape, which cannot describe two inputs or a vocabulary. `conf`: where the data's
    config is (a fork's own, added through hydra.searchpath in `overrides`)."""
    import torch

    from setup.parts import build, build_data, build_loaders

    example = [] if offline(data, conf) else write_example(data, directory / "files", conf)
    if example is None:
        return None
    cfg = compose_config(
        [f"task={task}", f"data={data}", f"model={model}", *example, *overrides], directory / "run"
    )
    splits = build_data(cfg)
    built_task = build("task", cfg.task)
    splits, loaders, _ = build_loaders(cfg, splits, torch.device("cpu"), rank, world_size)
    torch.manual_seed(0)
    net = build("model", cfg.model)
    return SimpleNamespace(cfg=cfg, task=built_task, model=net, splits=splits, loaders=loaders)


COMBOS = [
    (t, d, m)
    for t in options("task")
    for d in options("data")
    for m in options("model")
    if compatible(t, d, m)
]


def default_run() -> dict[str, str]:
    """The task, model and data that `python train.py` trains: the defaults of conf/train.yaml."""
    from omegaconf import OmegaConf

    chosen = {}
    for entry in OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml"))["defaults"]:
        if isinstance(entry, dict):
            chosen |= {k: v for k, v in entry.items() if k in ("task", "model", "data")}
    return chosen


def needs(*paths: str):
    """Mark a test that needs these files of the checkout (a part's config, a script): in a project without
    one of them (generated without it, or a fork that deleted it) the test is not collected (conftest.py)."""
    import pytest

    return pytest.mark.needs(*paths)


def first_quick(cases) -> list:
    """A matrix's first case runs in `make test`, its others with the `slow` tests (`make test-all`, CI): the
    quick suite checks the capability end to end once, the whole suite on every part. `cases`: what
    parametrize takes (values, tuples of values, or pytest.param)."""
    import pytest

    marked = []
    for i, case in enumerate(cases):
        if hasattr(case, "marks"):  # a pytest.param
            values, marks, id_ = case.values, list(case.marks), case.id
        else:
            values, marks, id_ = (case if isinstance(case, tuple) else (case,)), [], None
        marked.append(pytest.param(*values, marks=marks + ([pytest.mark.slow] if i else []), id=id_))
    return marked


# The template's default run, classification of digits with the MLP: the tests that check what exactly this
# run gives (its accuracy, split sizes, the MLP's keys) are collected only in a project that has all three
# (where they are the first task, data and model, so the default run: copier.yml).
REFERENCE_RUN = needs("conf/task/classification.yaml", "conf/data/digits.yaml", "conf/model/mlp.yaml")


def first_combo_per_task(skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """One trainable (offline data) combination for each task: for the tests that run each task once."""
    seen, combos = set(skip), []
    for task, data, model in COMBOS:
        if offline(data) and task not in seen:
            seen.add(task)
            combos.append((task, data, model))
    return combos


def kill9_once_written(victim: subprocess.Popen, path: Path, timeout: float = 180) -> int:
    """`kill -9` the process as soon as `path` exists (a crash right after that checkpoint); its exit code."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not path.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    return victim.wait()


# --- Waiting for a process's state, not for a time: a signal test means a moment, and a moment is a state --


def _ended(pid: int, what: str) -> AssertionError:
    return AssertionError(f"process {pid} ended before {what}")


def wait_for_handler(pid: int, signum: int, timeout: float = 120) -> None:
    """Until the process catches `signum` (its bit in SigCgt of /proc/PID/status): from then on a signal
    reaches the program's handler, not the default action nor Python's start-up one (SIGINT's bit is set by
    the interpreter itself before any of the program's code runs; SIGTERM's and SIGUSR1's only by the
    program)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            raise _ended(pid, f"it caught signal {signum}") from None
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if "State:\tZ" in status:
            raise _ended(pid, f"it caught signal {signum}")
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not install a handler for signal {signum} within {timeout} s")


def wait_for_mapped(pid: int, library: str, timeout: float = 120) -> None:
    """Until the process has loaded a shared library whose path holds `library` (e.g. libtorch: torch's
    import is under way)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if library in Path(f"/proc/{pid}/maps").read_text():
                return
        except (FileNotFoundError, ProcessLookupError):
            raise _ended(pid, f"it loaded {library}") from None
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not load {library} within {timeout} s")


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 180) -> str:
    """Read proc's output (a pipe) until a whole line matches the regex `pattern`; returns everything read,
    which the caller adds in front of what it reads later (proc.communicate())."""
    import re
    import select
    import time

    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while True:
        text = data.decode(errors="replace")
        if any(re.search(pattern, line) for line in text[: text.rfind("\n") + 1].splitlines()):
            return text
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output so far:\n{text}")
        if select.select([fd], [], [], min(left, 1.0))[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                code = proc.wait()
                raise AssertionError(f"exited ({code}) before a line matching {pattern!r}; output:\n{text}")
            data += chunk


def wait_for_moment(proc: subprocess.Popen, moment: str, timeout: float = 180) -> str:
    """Wait until train.py or eval.py is at `moment` of its start-up, a state it is in (never a time after
    its start, which a loaded machine stretches); returns the output read meanwhile (see wait_for_line).
    "handlers installed": system/signals.stop_while_starting ran (SIGTERM is caught only from then on);
    "hydra starting": life/cli.run ran raise_on_signals (the first to catch SIGUSR1); "torch importing":
    torch's libraries are loaded, its import under way; anything else: a regex for a line of the output."""
    import signal

    if moment == "handlers installed":
        wait_for_handler(proc.pid, signal.SIGTERM, timeout)
    elif moment == "hydra starting":
        wait_for_handler(proc.pid, signal.SIGUSR1, timeout)
    elif moment == "torch importing":
        wait_for_mapped(proc.pid, "libtorch", timeout)
    else:
        return wait_for_line(proc, moment, timeout)
    return ""


def wait_for_children(pid: int, count: int, timeout: float = 180) -> None:
    """Until the process has `count` child processes (DataLoader workers: the validation loader's two,
    forked by the check before training, then the training loader's two at the loop's first batch)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            raise _ended(pid, f"it had {count} child processes") from None
        if len(children) >= count:
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not have {count} child processes within {timeout} s")


def wait_for_path(proc: subprocess.Popen, pattern: str, timeout: float = 180) -> Path:
    """Until a file matching the glob `pattern` exists (a checkpoint's temp file: a write in flight)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := glob.glob(pattern):
            return Path(found[0])
        if proc.poll() is not None:
            raise _ended(proc.pid, f"a file matching {pattern} existed")
        time.sleep(0.0005)
    raise AssertionError(f"no file matching {pattern} within {timeout} s")
