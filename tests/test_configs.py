"""Every shipped config composes and instantiates. Cases come from the files on disk and from what each
config declares it takes and gives (tests/helpers.py: COMBOS), so a forker's new or deleted
conf/task, conf/model or conf/data file is covered without touching this file."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from setup.config import ConfigError, check_config
from tests.helpers import (
    COMBOS,
    FAST,
    REFERENCE_RUN,
    REPO,
    build_run,
    compose_config,
    declared,
    needs,
    offline,
    options,
    read_metrics,
    train_in_process,
    written,
)

MODELS, DATA, TASKS = options("model"), options("data"), options("task")
# An image model and image data (the first of each), for the interpolation of sizes between them.
IMAGE_PAIR = [
    (m, d)
    for m in MODELS
    if "in_channels" in written("model", m)
    for d in DATA
    if declared("data", d).get("input") == "image"
][:1]


def test_every_config_declares_what_it_takes_and_gives():
    for name in DATA:
        d = declared("data", name)
        assert {"input", "target", "source"} <= set(d), name
        assert {"input_shape", "num_outputs"} <= set(written("data", name)), name
        assert d["source"] in ("builtin", "download", "files"), name
        assert d["source"] != "builtin" or "example" not in d, name  # nothing to write: it needs no files
    for name in MODELS:
        assert {"input", "output"} <= set(declared("model", name)), name
    for name in TASKS:
        assert {"target", "output"} <= set(declared("task", name)), name
        assert {"monitor", "mode"} <= set(written("task", name)), name
    # Each task, each model and each dataset can be trained with something.
    assert {t for t, _, _ in COMBOS} == set(TASKS)
    assert {m for _, _, m in COMBOS} == set(MODELS)
    assert {d for _, d, _ in COMBOS} == set(DATA)


@pytest.mark.parametrize(("task", "data", "model"), COMBOS)
def test_model_output_fits_the_task_on_a_real_batch(task, data, model, tmp_path):
    """The model, called as the task calls it on a batch of the data itself (its builtin split or its example
    files, through its loader and collate: dict samples, two inputs, token ids), gives what the task checks,
    in eval mode, and a loss in train mode: train.py's own check before training."""
    from setup.parts import check_fit

    run = build_run(task, data, model, tmp_path, ["data.batch_size=2"])
    if run is None:
        pytest.skip(f"conf/data/{data}.yaml has no builtin samples and no `example` to write some")
    check_fit(run.cfg, run.task, run.model, run.splits, run.loaders.val, torch.device("cpu"))


@pytest.mark.parametrize("data", [d for d in DATA if offline(d)])
def test_offline_data_config_instantiates(data, tmp_path):
    cfg = compose_config([f"data={data}"], tmp_path / "run")
    splits = instantiate(cfg.data.dataset)
    assert len(splits.train) > 0 and len(splits.val) > 0 and len(splits.test) > 0
    sample = splits.train[0]  # a tuple, or a dict of named fields: the declared shape is its first input's
    first = sample[0] if isinstance(sample, (tuple, list)) else None
    if isinstance(first, torch.Tensor) and cfg.data.declares.input != "tokens":
        assert tuple(first.shape) == tuple(cfg.data.input_shape)


@needs("conf/data/imagefolder.yaml")
def test_imagefolder_instantiates_from_files(tmp_path):
    from data.imagefolder import write_example as write_imagefolder

    overrides = write_imagefolder(tmp_path / "images", classes=3, per_class=10)
    cfg = compose_config(["data=imagefolder", *overrides], tmp_path / "run")
    splits = instantiate(cfg.data.dataset)
    x, y = splits.train[0]
    assert x.shape == (cfg.data.in_channels, 16, 16) and 0 <= int(y) < 3


@pytest.mark.parametrize(
    "group", ["optimizer", "scheduler", "trainer", "logging", "experiment", "debug", "task"]
)
def test_every_option_of_the_other_groups_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"], tmp_path / "run")
        assert cfg.model._target_ and cfg.data.dataset._target_ and cfg.task._target_


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_build_and_step(optimizer, scheduler, tmp_path):
    from setup.parts import build

    cfg = compose_config([f"optimizer={optimizer}", f"scheduler={scheduler}"], tmp_path / "run")
    net = build("model", cfg.model)
    opt = instantiate(cfg.optimizer)(net.parameters())  # the Hydra idiom: the node is the constructor's
    sched = instantiate(cfg.scheduler)(opt, total_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] <= cfg.optimizer.lr


@pytest.mark.parametrize(("model", "data"), IMAGE_PAIR)
def test_model_sizes_follow_the_data_by_interpolation(model, data, tmp_path):
    cfg = compose_config([f"model={model}", f"data={data}"], tmp_path / "run")
    assert cfg.model.in_channels == cfg.data.in_channels


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_the_shipped_param_groups_are_one_group_of_every_parameter(optimizer, tmp_path):
    """As the optimizer was built before parameter groups: its state_dict, and so every checkpoint and
    resume, is unchanged."""
    from setup.parts import build, build_optimizer

    cfg = compose_config([f"optimizer={optimizer}"], tmp_path / "run")
    net = build("model", cfg.model)
    built = build_optimizer(cfg, net, torch.device("cpu"))
    plain = instantiate(cfg.optimizer)(net.parameters())
    assert [g["params"] for g in built.param_groups] == [list(net.parameters())]
    assert built.state_dict() == plain.state_dict()


# The head (mlp's last Linear, `7.`) with its own lr and weight decay, and no decay on any 1-D parameter.
GROUPS = ["model=mlp", "param_groups.no_decay_norm_and_bias=true",
          "param_groups.by_name=[{params: '7.*', lr: 1.0e-3, weight_decay: 0.1}]"]  # fmt: skip


def described(optimizer, model) -> list[dict]:
    """Each group's options and its parameters' names: comparable across two copies of a model."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [{**g, "params": [names[id(p)] for p in g["params"]]} for g in optimizer.param_groups]


@REFERENCE_RUN
def test_the_benchmark_builds_and_trains_the_optimizer_train_py_builds(tmp_path, monkeypatch):
    """Parameter groups set in the config: train.set_up's optimizer has them, with the weight decay each
    asks for, and the benchmark's hand-written side builds the same groups, so both still do the same work."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from bench_paired import Raw, Template, compose, max_weight_diff, timed

    run_dir = tmp_path / "run"
    tpl = Template(compose([*FAST, *GROUPS], run_dir), run_dir)
    try:
        raw = Raw(tpl)
        ours = described(tpl.run.optimizer, tpl.run.model)
        assert described(raw.optimizer, raw.model) == ours
        lr = tpl.run.cfg.optimizer.lr  # as the groups were built (the schedule has moved `lr` since)
        assert [(g["params"], g["initial_lr"], g["weight_decay"]) for g in ours] == [
            (["1.weight", "4.weight"], lr, 0.01),
            (["1.bias", "4.bias"], lr, 0.0),
            (["7.weight"], 1e-3, 0.1),
            (["7.bias"], 1e-3, 0.0),
        ]
        timed(tpl, 2)
        timed(raw, 2)
        assert tpl.state.step == 2 and max_weight_diff(tpl.run.model, raw.model) == 0
    finally:
        tpl.close()


@REFERENCE_RUN
def test_a_run_with_param_groups_trains_and_checkpoints_them(tmp_path):
    run = tmp_path / "run"
    train_in_process([*FAST, *GROUPS], run)
    assert read_metrics(run)["steps"] == 3
    saved = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["optimizer"]
    assert [g["weight_decay"] for g in saved["param_groups"]] == [0.01, 0.0, 0.1, 0.0]
    assert [g["initial_lr"] for g in saved["param_groups"]] == [3e-3, 3e-3, 1e-3, 1e-3]
    assert len(saved["state"]) == 6  # every parameter stepped, each in one group


@REFERENCE_RUN
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["param_groups.by_name=[{params: 'backbone.*', lr: 1.0e-4}]"],
         "param_groups.by_name[0].params: 'backbone.*' matches no parameter of MLP (its parameters: "
         "1.weight, 1.bias, 4.weight, 4.bias, 7.weight, 7.bias)"),
        (["param_groups.by_name=[{params: '7.*'}, {params: '*.bias', weight_decay: 0}]"],
         "param_groups.by_name[0] and param_groups.by_name[1] both take 7.bias: a parameter is in one group"),
        (["param_groups.by_name=[{params: '7.*', weight_deacy: 0}]"],
         "param_groups.by_name[0].weight_deacy is not an option of AdamW (its options: lr, betas, "),
        (["param_groups.by_name=[{params: '7.*', lr: 0}]"],
         "param_groups.by_name[0].lr=0 must be a finite number greater than 0"),
        (["param_groups.by_name=[{lr: 1.0e-4}]"],
         "param_groups.by_name[0]={'lr': 0.0001} must be a mapping with params (name patterns), "
         "e.g. {params: 'backbone.*', lr: 1.0e-4}"),
        (["param_groups.no_decay_norm_and_bias=yes please"],
         "param_groups.no_decay_norm_and_bias='yes please' must be true or false"),
        (["+param_groups.no_decay=true"],
         "param_groups.no_decay is not a config key this template reads (did you mean "
         "param_groups.no_decay_norm_and_bias?)"),
    ],
)  # fmt: skip
def test_a_param_group_that_cannot_work_is_one_line_naming_it(overrides, message, tmp_path):
    from setup.parts import build, build_optimizer

    cfg = compose_config(["model=mlp", *overrides], tmp_path / "run")
    with pytest.raises(ConfigError) as caught:
        check_config(cfg)
        build_optimizer(cfg, build("model", cfg.model), torch.device("cpu"))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
