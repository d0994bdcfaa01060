"""Every shipped config composes and instantiates. Cases come from the files on disk, so a forker's new
conf/model/*.yaml or conf/data/*.yaml is covered without touching this file."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import CONF, compose_config
from tests.test_datasets import write_imagefolder

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# Datasets that need files on disk are covered here when they are offline-capable, and in test_datasets.py
# with small files in each dataset's own format.
DOWNLOADED = {"mnist", "fashion_mnist", "cifar10"}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_required_options_exist():
    assert {"mlp", "simple_cnn", "resnet18"} <= set(MODELS)
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "fake"} <= set(DATA)
    assert {"adamw", "sgd"} <= set(group_options("optimizer"))
    assert {"cosine", "step", "none"} <= set(group_options("scheduler"))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", ["digits", "fake"])
def test_model_instantiates_and_fits_the_data(model, data, tmp_path):
    cfg = compose_config([f"model={model}", f"data={data}"], tmp_path / "run")
    net = instantiate(cfg.model)
    x = torch.randn(2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    assert net(x).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("data", sorted(set(DATA) - DOWNLOADED))
def test_offline_data_config_instantiates(data, tmp_path):
    overrides = [f"data={data}"]
    if data == "imagefolder":
        root = write_imagefolder(tmp_path / "images", classes=3, per_class=10)
        overrides += [f"data.dataset.root={root}", "data.num_classes=3", "data.image_size=16"]
    cfg = compose_config(overrides, tmp_path / "run")
    splits = instantiate(cfg.data.dataset)
    x, y = splits.train[0]
    assert x.shape == (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    assert 0 <= int(y) < cfg.data.num_classes
    assert len(splits.train) > 0 and len(splits.val) > 0 and len(splits.test) > 0


@pytest.mark.parametrize("group", ["optimizer", "scheduler", "trainer", "logging", "experiment", "debug"])
def test_every_option_of_the_other_groups_composes(group, tmp_path):
    for option in group_options(group):
        cfg = compose_config([f"{group}={option}"], tmp_path / "run")
        assert cfg.model._target_ and cfg.data.dataset._target_


@pytest.mark.parametrize("optimizer", group_options("optimizer"))
@pytest.mark.parametrize("scheduler", group_options("scheduler"))
def test_optimizer_and_scheduler_build_and_step(optimizer, scheduler, tmp_path):
    cfg = compose_config([f"optimizer={optimizer}", f"scheduler={scheduler}"], tmp_path / "run")
    net = instantiate(cfg.model)
    opt = instantiate(cfg.optimizer)(net.parameters())
    sched = instantiate(cfg.scheduler)(opt, total_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] <= cfg.optimizer.lr


def test_model_sizes_follow_the_data_by_interpolation(tmp_path):
    cfg = compose_config(["model=resnet18", "data=cifar10"], tmp_path / "run")
    assert (cfg.model.in_channels, cfg.model.num_classes, cfg.model.image_size) == (3, 10, 32)
