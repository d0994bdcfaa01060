"""What a checkpoint or a run directory stores is bounded data that builds only what its group builds: every
public callable of every allowed module judged by the kind its group needs (an example writer is never
one), a model left `_partial_`, small files that would hang their reader (doubling interpolations, nested
YAML anchors, a list doubled 40 times), tampered fields, and class names found in a user's CSV that look
like interpolations, which stay data. The readers are the real ones: eval.py, train.py resume=, load_trained.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import shutil
import typing
from pathlib import Path

import pytest
import torch
import yaml

from setup.config import ConfigError
from setup.trust import ALLOWED_TARGETS, GROUPS, check_target, group_of, read_stored_config, stored_config
from store.checkpoint import CheckpointError, load_checkpoint
from store.trained import load_trained
from tests.helpers import CONF, FAST, REFERENCE_RUN, needs, run_cli, train_in_process
from tests.test_untrusted import assert_one_line, run_eval

pytestmark = REFERENCE_RUN


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stored") / "run"
    train_in_process(FAST, run)
    return run


def run_with(trained: Path, tmp_path: Path, state: dict) -> Path:
    """A copy of the trained run whose checkpoints are `state`: what resume= and load_trained read."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for name in ("last.pt", "best.pt"):
        torch.save(state, run / "checkpoints" / name)
    return run


def with_config(trained: Path, **changes) -> dict:
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    state["config"].update(copy.deepcopy(changes))
    return state


# --- 5. Each group builds only its own constructors ------------------------------------------------------


def allowed_modules() -> list[str]:
    """Every module under the allowed prefixes, read from the packages on disk (a fork's new files too)."""
    found = []
    for prefix in ALLOWED_TARGETS:
        module = importlib.import_module(prefix)
        found.append(prefix)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                found.append(info.name)
    return sorted(set(found))


def public_callables() -> list[str]:
    names = []
    for name in allowed_modules():
        module = importlib.import_module(name)
        names += [
            f"{name}.{n}" for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
        ]
    return names


def is_constructor(group: str, obj) -> bool:
    """What each group builds, said here in the words of docs/resume.md, with typing's own reading of a
    function's return annotation (the code under test reads it another way)."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    from data.splits import Splits
    from tasks.base import Task

    def made(fn):
        try:
            return typing.get_type_hints(fn).get("return") if inspect.isfunction(fn) else None
        except Exception:  # an annotation that names nothing importable: no kind
            return None

    def derived(cls, *bases) -> bool:
        return inspect.isclass(cls) and issubclass(cls, bases) and cls not in bases

    if not any((getattr(obj, "__module__", None) or "").startswith(m) for m in GROUPS[group].modules):
        return False
    return {
        "model": derived(obj, torch.nn.Module)
        or made(obj) is torch.nn.Module
        or derived(made(obj), torch.nn.Module),
        "task": derived(obj, Task),
        "data.dataset": made(obj) is Splits,
        "data.collate_fn": inspect.isfunction(obj) and obj.__name__.split("_")[0] == "collate",
        "optimizer": derived(obj, torch.optim.Optimizer),
        "scheduler": derived(obj, LRScheduler) or obj is ReduceLROnPlateau or derived(made(obj), LRScheduler),
    }[group]


def test_every_public_callable_of_every_allowed_module_is_judged_by_its_group():
    from hydra._internal.utils import _locate

    accepted = {group: [] for group in GROUPS}
    for name in public_callables():
        obj = _locate(name)
        for group in GROUPS:
            try:
                check_target(name, f"{group}._target_", group)
                accepted[group].append(name)
                assert is_constructor(group, obj), f"{name} accepted as {group}"
            except ConfigError as err:
                assert not is_constructor(group, obj), f"{name} refused as {group}: {err}"
                assert "\n" not in str(err) and f"{group}._target_={name!r}" in str(err)
    # The helpers the issue found, and their like, refused everywhere.
    helpers = ["data.csv.write_example", "data.imagefolder.write_example", "data.splits.split_indices",
               "tasks.base.TaskError", "torch.optim.Optimizer", "models.resnet.models.resnet18"]  # fmt: skip
    assert not [h for h in helpers if any(h in names for names in accepted.values())]
    # Each group that conf/ builds (in a generated project, of the parts it has) accepts something.
    built = {group_of(at) for at, _ in conf_targets() if not at.startswith("hydra")}
    assert all(accepted[group] for group in built), accepted


def conf_targets():
    """(group path, _target_) of every `_target_` in conf/, at the place the composed config puts it."""
    for path in sorted(CONF.rglob("*.yaml")):
        text = path.read_text()
        first = text.splitlines()[0] if text else ""
        package = first.split("@package", 1)[1].strip() if "@package" in first else path.parent.name
        root = "" if package == "_global_" else package.replace("/", ".")

        def walk(node, at):
            if isinstance(node, dict):
                if "_target_" in node:
                    yield at, node["_target_"]
                for k, v in node.items():
                    yield from walk(v, f"{at}.{k}" if at else str(k))

        yield from walk(yaml.safe_load(text), root)


def test_what_conf_builds_is_accepted_and_no_example_writer_is():
    built = [(at, target) for at, target in conf_targets() if not at.startswith("hydra")]
    assert {at for at, _ in built} >= {"model", "task", "data.dataset", "optimizer", "scheduler"}
    for at, target in built:
        check_target(target, f"{at}._target_", group_of(at))
    writers = [
        yaml.safe_load(p.read_text()).get("declares", {}).get("example") for p in CONF.glob("data/*.yaml")
    ]
    for writer in filter(None, writers):  # every data config's example writer, whichever a project has
        for group in GROUPS:
            with pytest.raises(ConfigError, match="stored config refused"):
                check_target(writer, f"{group}._target_", group)


@pytest.mark.slow
@needs("conf/data/csv.yaml", "conf/data/imagefolder.yaml")  # the writers of the case
def test_an_example_writer_in_a_stored_config_writes_nothing(trained, tmp_path):
    """The issue's case: eval.py and resume= made /anywhere/evil/table.csv; load_trained wrote PNGs."""
    evil = tmp_path / "evil"
    state = with_config(trained, model={"_target_": "data.csv.write_example", "directory": str(evil)})
    run = run_with(trained, tmp_path, state)
    assert_one_line(run_eval([f"ckpt={run / 'checkpoints' / 'best.pt'}"]), "model._target_='data.csv.write_")
    assert_one_line(run_cli([f"resume={run}"]), "model._target_='data.csv.write_example'")
    assert not evil.exists()
    for key, writer in [("task", "data.imagefolder.write_example"), ("data", "data.csv.write_example")]:
        node = {"_target_": writer, "directory": str(evil)}
        config = {"data": {**state["config"]["data"], "dataset": node}} if key == "data" else {key: node}
        torch.save(with_config(trained, **config), run / "checkpoints" / "best.pt")
        with pytest.raises(ConfigError, match=f"{writer}' is (not an allowed target|no constructor of)"):
            load_trained(run)
    assert not evil.exists()


def test_a_target_outside_the_groups_or_a_partial_model_is_refused(trained, tmp_path):
    config = load_checkpoint(trained / "checkpoints" / "best.pt")["config"]
    inner = copy.deepcopy(config)
    inner["trainer"]["x"] = {"_target_": "models.mlp.MLP"}
    with pytest.raises(ConfigError, match=r"trainer\.x\._target_: nothing is built there"):
        stored_config(inner, "checkpoint c")
    nested = copy.deepcopy(config)
    nested["model"]["hidden"] = {"_target_": "data.csv.write_example", "directory": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"model\.hidden\._target_='data\.csv\.write_example'"):
        stored_config(nested, "checkpoint c")
    # The escape kept for data found in files is no way in: not in a node that is built.
    built = copy.deepcopy(config)
    built["data"]["found_in_files"] = ["dataset"]
    built["data"]["dataset"]["x"] = "\\${oc.env:HOME}"
    with pytest.raises(ConfigError, match=r"data\.dataset\.x holds an interpolation"):
        stored_config(built, "checkpoint c")


@pytest.mark.slow
def test_a_stored_model_left_partial_is_one_line(trained, tmp_path):
    """It was an AttributeError traceback: a partial has no .to() and no weights."""
    from omegaconf import OmegaConf

    from setup.parts import build

    state = with_config(trained)
    state["config"]["model"]["_partial_"] = True
    run = run_with(trained, tmp_path, state)
    assert_one_line(run_eval([f"ckpt={run / 'checkpoints' / 'best.pt'}"]), "model._partial_=True")
    with pytest.raises(ConfigError, match=r"model\._partial_=True: only"):
        load_trained(run)
    # One's own config too: build() says what it got.
    node = OmegaConf.create({"_target_": "models.mlp.MLP", "_partial_": True, "input_shape": [4],
                             "num_outputs": 2, "hidden_dims": [3]})  # fmt: skip
    with pytest.raises(ConfigError, match="not a torch.nn.Module: a model is built whole, without _partial_"):
        build("model", node)


# --- 7. Small files that would hang their reader ---------------------------------------------------------


def doubling_interpolations() -> str:
    return "r0: x\n" + "".join(f"r{i}: '{f'${{r{i - 1}}}' * 4}'\n" for i in range(1, 19))


def nested_anchors() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (doubling_interpolations, "interpolations take more than 10000 lookups"),
        (nested_anchors, "line 1 holds a YAML anchor or alias"),
    ],
)
def test_a_run_config_that_would_hang_resume_is_one_line(trained, tmp_path, text, message):
    from store.resume import _plain_resolved

    run = run_with(trained, tmp_path, load_checkpoint(trained / "checkpoints" / "last.pt"))
    own = run / ".hydra" / "config.yaml"
    own.write_text(text())
    # First the command, under a bound (a read that hangs fails here instead of blocking the suite); its
    # time is the benchmark's business, not a test's.
    line = assert_one_line(run_cli([f"resume={run}"], timeout=60), message)
    assert f"{own} cannot be read as this run's config" in line
    with pytest.raises(ConfigError, match=message):
        _plain_resolved(read_stored_config(own))


@pytest.mark.parametrize(
    ("text", "message"),
    [("x: " + "[" * 40 + "]" * 40, "nested more than 32 levels deep"),
     ("x: [" + "1, " * 100_001 + "]", "more than 100,000 values"),
     ("x: '" + "y" * (1 << 20) + "'", "more than a stored config may be")],
)  # fmt: skip
def test_a_stored_yaml_config_is_read_with_bounds(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_stored_config(path)


def doubled(times: int) -> list:
    """A list that pickle stores in a few hundred bytes and any reader walks as 2^times items."""
    tags = ["x"]
    for _ in range(times):
        tags = [tags, tags]
    return tags


@pytest.mark.slow
def test_a_checkpoint_that_would_hang_its_readers_is_one_line(trained, tmp_path):
    run = run_with(trained, tmp_path, with_config(trained, tags=doubled(40)))
    ckpt = run / "checkpoints" / "best.pt"
    assert ckpt.stat().st_size < 1 << 20
    # First the command, under a bound (a read that hangs fails there instead of blocking the suite).
    assert_one_line(run_eval([f"ckpt={ckpt}"]), "nested more than 32 levels deep")
    with pytest.raises(CheckpointError, match="nested more than 32 levels deep"):
        load_trained(run)
    # Wide rather than deep: 40 keys sharing a list of 2^20 items.
    torch.save(with_config(trained, tags={f"k{i}": doubled(20) for i in range(40)}), ckpt)
    with pytest.raises(CheckpointError, match="more than 2,000,000 values"):
        load_trained(run)


# --- 8. Tampered fields ----------------------------------------------------------------------------------

TAMPERED = [("model", 5), ("model", "abc"), ("ema", 5), ("optimizer", [1]), ("epoch", "x"), ("epoch", [1]),
            ("step", 10**30), ("step", -1), ("step", 1.5), ("step", True), ("batch_in_epoch", None),
            ("config", "abc")]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), TAMPERED)
def test_a_tampered_field_is_one_line_for_every_reader(trained, tmp_path, field, value):
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    ckpt = tmp_path / "best.pt"
    torch.save({**state, field: value}, ckpt)
    with pytest.raises(CheckpointError) as err:
        load_trained(ckpt)
    assert "\n" not in str(err.value) and f"its {field} is " in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(("field", "value"), [("step", 10**30), ("ema", 5)])
def test_eval_refuses_a_tampered_field_in_one_line(trained, tmp_path, field, value):
    ckpt = tmp_path / "best.pt"
    torch.save({**load_checkpoint(trained / "checkpoints" / "best.pt"), field: value}, ckpt)
    assert_one_line(run_eval([f"ckpt={ckpt}"]), f"its {field} is ")
    assert not (tmp_path / "metrics.json").exists()


# --- 9. Data found in a user's file stays data -----------------------------------------------------------


@pytest.mark.slow
@needs("conf/data/csv.yaml")
def test_class_names_that_look_like_interpolations_stay_data(tmp_path, monkeypatch):
    """Labels `${oc.env:HOME}` and `\\${x}` train; the run's own checkpoints are then read by eval.py,
    resume= and load_trained, and the names read back as they are in the file, never resolved."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    labels = ["${oc.env:HOME}", "\\${x}", "plain"]
    rows = "".join(f"{i % 3 + (i * 37 % 100) / 200:.3f},{i * 13 % 10},{labels[i % 3]}\n" for i in range(90))
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n" + rows)
    run = tmp_path / "run"
    train_in_process([*FAST, "data=csv", f"data.path={table}", "data.target=label"], run)
    first = load_trained(run)
    assert list(first.cfg.data.class_names) == sorted(labels)
    proc = run_eval([f"ckpt={run / 'checkpoints' / 'best.pt'}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resumed = load_trained(run / "checkpoints" / "last.pt")
    assert list(resumed.cfg.data.class_names) == sorted(labels) and resumed.step > first.step
    assert str(tmp_path / "home") not in (run / "checkpoints" / "last.pt").read_bytes().decode("latin-1")
