"""The Hydra idiom works on every shipped part: `hydra.utils.instantiate(cfg.model)` builds the model and
`instantiate(cfg.task)` the task, as any Hydra user writes it, with no key to strip first. What a model and
a task declare they take and give sits beside them, in `declares` (their `# @package _global_` files fill
it), where instantiate never looks. Cases come from the files on disk: a fork's added model or task is
covered with no edit here."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from setup.config import ConfigError, check_config
from setup.declares import DECLARES
from tasks.base import Task
from tests.helpers import (
    COMBOS,
    CONF,
    REFERENCE_RUN,
    build_run,
    compose_config,
    declared,
    default_run,
    experiment_inputs,
    needs,
    offline,
    options,
    run_cli,
    written,
)


def compose_as_a_user(overrides: list[str], hydra_node: bool = False) -> DictConfig:
    """The config as Hydra's compose API gives it to anyone: no resolver of the template's registered, no
    run directory made."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_node)


def with_offline_data(group: str) -> list:
    """Each part of the group (model or task) on disk, with the first task, data and model it pairs with
    whose data needs no download and no files (no dataset.root). A part that pairs only with data to
    download or of the user's is not listed (a project has no skipped tests: conftest.py); test_configs.py
    builds it on a real batch of that data's example files."""
    found = {}
    for task, data, model in COMBOS:
        name = {"task": task, "model": model}[group]
        if offline(data) and name not in found:
            found[name] = (task, data, model)
    return [pytest.param(*found[name], id=name) for name in options(group) if name in found]


def tensors_in(value) -> list[torch.Tensor]:
    """The tensors in a model's output: itself, or those in its lists, tuples, dicts and attributes."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    elif not isinstance(value, (list, tuple)):
        value = list(vars(value).values()) if hasattr(value, "__dict__") else []
    return [t for v in value for t in tensors_in(v)]


@pytest.mark.parametrize(("task", "data", "model"), with_offline_data("model"))
def test_instantiate_builds_every_model_and_its_forward_runs(task, data, model, tmp_path):
    cfg = compose_as_a_user([f"task={task}", f"data={data}", f"model={model}"])
    # Only the constructor's parameters: the declarations are in `declares`, merged from both files.
    assert not set(DECLARES["model"]) & set(cfg.model), OmegaConf.to_yaml(cfg.model)
    assert OmegaConf.to_container(cfg.declares) == {
        "task": declared("task", task),
        "model": declared("model", model),
    }
    assert isinstance(instantiate(cfg.model), nn.Module)
    # Called as the task calls it, on a batch of the data itself (two inputs, a dict, token ids: whatever
    # the data gives), not on a tensor of a declared shape.
    run = build_run(task, data, model, tmp_path, ["data.batch_size=2"])
    batch = next(iter(run.loaders.val))
    with torch.no_grad():
        out = run.model.eval()(run.task.inputs(batch))
    found = tensors_in(out)
    assert found and all(torch.isfinite(t.float()).all() for t in found)


@pytest.mark.parametrize(("task", "data", "model"), with_offline_data("task"))
def test_instantiate_builds_every_task(task, data, model):
    cfg = compose_as_a_user([f"task={task}", f"data={data}", f"model={model}"])
    assert not set(DECLARES["task"]) & set(cfg.task), OmegaConf.to_yaml(cfg.task)
    built = instantiate(cfg.task)
    assert isinstance(built, Task)
    assert (built.monitor, built.mode) == (cfg.task.monitor, cfg.task.mode)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_an_experiment_s_override_of_the_model_and_task_brings_their_declarations(
    experiment, tmp_path, monkeypatch
):
    """`override /model: ...` in an experiment replaces the default model's node and its declarations
    alike (nothing of the default's is left in either), and both still instantiate."""
    files, weights = experiment_inputs(experiment, tmp_path)  # your files, pretrained weights: made up
    for key, value in weights.items():
        monkeypatch.setenv(key, value)
    cfg = compose_as_a_user([f"experiment={experiment}", *files], hydra_node=True)
    chosen = cfg.hydra.runtime.choices
    for group in ("model", "task"):
        assert cfg[group]._target_ == written(group, chosen[group])["_target_"], group
        assert OmegaConf.to_container(cfg.declares[group]) == declared(group, chosen[group]), group
    assert isinstance(instantiate(cfg.model), nn.Module) and isinstance(instantiate(cfg.task), Task)


@needs("conf/model/mlp.yaml")
def test_a_model_parameter_is_overridden_as_in_any_hydra_group():
    cfg = compose_as_a_user(["model=mlp", "model.hidden_dims=[64]"])
    layers = [m for m in instantiate(cfg.model).modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in layers] == [64, cfg.data.num_outputs]


def test_declaration_keys_left_in_a_fresh_model_config_are_refused_naming_where_they_go(tmp_path):
    """A fork's model yaml written for an older template (its declarations inside `model:`) fails in one
    line that says where they go now: a fresh config's model node is passed whole."""
    from setup.parts import build

    cfg = compose_config([f"model={default_run()['model']}"], tmp_path / "run")
    with open_dict(cfg):
        cfg.model.input = list(cfg.declares.model.input)
    with pytest.raises(
        ConfigError, match=r"'input'; the declaration input now goes under declares\.model \(docs/tasks\.md\)"
    ):
        build("model", cfg.model)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+declares.modle.input=[image]",
            "declares.modle names no config group (did you mean declares.model?)",
        ),
        (
            "+declares.model.ouput=vector",
            "declares.model.ouput is not a config key this template reads (did you mean declares.model.output?)",
        ),
        ("declares.model.input=image", "declares.model.input='image' must be a list of words, e.g. [image]"),
        ("declares.task.output=[vector]", "declares.task.output=['vector'] must be a word, e.g. vector"),
        ("+declares.task.worked_example=maybe", "declares.task.worked_example='maybe' must be true or false"),
    ],
)
def test_the_schema_checks_the_declarations(override, message, tmp_path):
    cfg = compose_config([override], tmp_path / "run")
    with pytest.raises(ConfigError) as caught:
        check_config(cfg)
    assert str(caught.value) == message


def test_another_group_may_declare_what_it_likes(tmp_path):
    cfg = compose_config(["+declares.optimizer.needs=parameters"], tmp_path / "run")
    check_config(cfg)


@REFERENCE_RUN
@needs("conf/model/gpt.yaml")
def test_a_model_that_does_not_take_the_data_stops_in_one_line(tmp_path):
    proc = run_cli(["model=gpt", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output
    misfit = "task=classification data=digits model=gpt: the model takes tokens input, the data gives image"
    assert misfit in errors[0], errors[0]
    assert not (tmp_path / "run").exists()
