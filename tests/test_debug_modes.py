"""Every debug mode (conf/debug/) bounds the run, whatever the experiment (conf/experiment/) says: a few
optimizer steps, a few batches of validation and of test. Both lists are read from disk."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
from omegaconf import OmegaConf

from tests.helpers import PYTHON, REPO, compose_config, experiment_inputs, options

# The most training batches a debug mode may run (debug=overfit: 60 epochs of 4 batches), and the most
# batches of one validation or of the test.
MAX_TRAIN_BATCHES = 256
MAX_EVAL_BATCHES = 5


def train_batches(t) -> float:
    """How many batches the run trains on at most, from the keys train.py's Plan reads."""
    if t.max_steps:  # wins over max_epochs: the epochs go on until it is reached
        return t.max_steps * t.accumulate_grad_batches
    return t.max_epochs * (t.overfit_batches or t.limit_batches or math.inf)


@pytest.mark.parametrize("experiment", [None, *options("experiment")])
@pytest.mark.parametrize("mode", options("debug"))
def test_every_debug_mode_bounds_every_experiment(mode, experiment, tmp_path):
    from setup.config import check_config

    files = experiment_inputs(experiment, tmp_path)[0] if experiment else []  # its data's example files
    overrides = [f"debug={mode}", *([f"experiment={experiment}"] if experiment else []), *files]
    cfg = compose_config(overrides, tmp_path / "run")
    check_config(cfg)  # what train.py checks first: the combination is a valid run
    t = cfg.trainer
    where = f"debug={mode} experiment={experiment}: " + OmegaConf.to_yaml(t).replace("\n", ", ")
    batches = train_batches(t)
    assert batches <= MAX_TRAIN_BATCHES, f"{batches} training batches; {where}"
    val = t.overfit_batches if t.overfit_batches else t.limit_val_batches  # overfit validates on its batches
    assert val is not None and val <= max(MAX_EVAL_BATCHES, t.overfit_batches or 0), where
    assert t.limit_test_batches is not None and t.limit_test_batches <= MAX_EVAL_BATCHES, where
    steps = t.max_steps or math.ceil(batches / t.accumulate_grad_batches)
    assert not t.val_every_n_steps or t.val_every_n_steps <= steps, where
    assert t.max_time is None, where  # the bound is the run's length, not a clock


@pytest.mark.slow
def test_smoke_runs_every_experiment(tmp_path):
    """`python train.py -m 'experiment=glob(*)' debug=smoke`, for real: every experiment trains its three
    steps, validates and tests, in one sweep; one that needs inputs from outside the checkout (your files,
    pretrained weights: tests/helpers.py experiment_inputs) in a run of its own, given them."""
    root = tmp_path / "multirun"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    inputs = {name: experiment_inputs(name, tmp_path / name) for name in options("experiment")}
    given = sorted(name for name, (files, weights) in inputs.items() if files or weights)
    sweeps = [(f"experiment=glob(*,exclude=[{','.join(given)}])" if given else "experiment=glob(*)", [], {})]
    sweeps += [(f"experiment={name}", *inputs[name]) for name in given]
    for choice, files, weights in sweeps:
        proc = subprocess.run(
            [PYTHON, str(REPO / "train.py"), "-m", choice, "debug=smoke", "logging.progress_bar=false",
             f"paths.multirun_root={root}", "data.num_workers=0", *files],
            cwd=REPO, env={**env, **weights}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(root.rglob("metrics.json"))
    assert len(runs) == len(options("experiment")), [str(r) for r in runs]
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["steps"] <= 3 and metrics["epochs"] == 1, (path, metrics)
