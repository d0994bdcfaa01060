"""End to end: each model trains on a small slice, through Hydra's compose API and as `python train.py`,
and leaves a complete run directory behind."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import (
    COMBOS,
    FAST,
    REFERENCE_RUN,
    compatible,
    default_run,
    event_accumulator,
    experiment_inputs,
    needs,
    offline,
    options,
    read_metrics,
    run_cli,
    train_in_process,
)

SCALARS = {"train/loss", "train/lr"}
# The shipped combinations that need no download and no files of the user's; each trains a few batches.
TRAINABLE = [c for c in COMBOS if offline(c[1])]
# What `python train.py` trains (conf/train.yaml).
DEFAULT = default_run()
# The shipped combinations that the declarations rule out (and that need no download).
MISFITS = [(t, d, m) for t in options("task") for d in options("data") for m in options("model")
           if offline(d) and not compatible(t, d, m)]  # fmt: skip


def assert_run_dir(run, graph: bool, by_hydra: bool = False):
    if by_hydra:  # the compose API writes no train.log; a real `python train.py` does
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    metrics = read_metrics(run)
    monitor = metrics["monitor"].split("/", 1)[1]
    tags = event_accumulator(run).Tags()
    # Every val metric the task computes (a val/loss only where it has one: detection has none).
    val = {key.removesuffix("_last") for key in metrics if key.startswith("val/") and key.endswith("_last")}
    assert set(tags["scalars"]) >= SCALARS | val | {f"val/{monitor}"}, tags["scalars"]
    assert tags["graph"] is graph
    assert f"test/{monitor}" in metrics and f"val/{monitor}_best" in metrics
    assert math.isfinite(metrics[f"test/{monitor}"])
    return metrics


@pytest.mark.parametrize(("task", "data", "model"), TRAINABLE)
def test_each_combination_trains_in_process(task, data, model, tmp_path):
    run = tmp_path / "run"
    # Two batches of validation and test: a whole split of a large model (resnet18 on fake's 256 test
    # images) would cost more than all the rest of the test.
    few = ["trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    train_in_process(
        [*FAST, *few, f"task={task}", f"data={data}", f"model={model}", "logging.graph=true"], run
    )
    metrics = assert_run_dir(run, graph=True)
    assert metrics["steps"] == 3
    assert "samples_per_s" in metrics or "tokens_per_s" in metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", sorted({m for t, d, m in TRAINABLE if (t, d) == (DEFAULT["task"], DEFAULT["data"])})
)
def test_each_model_trains_from_the_command_line(model, tmp_path):
    run = tmp_path / "outputs" / "cli"
    graph = model == "resnet18"  # `python train.py model=resnet18 logging.graph=true`, the README's example
    proc = run_cli([*FAST, f"model={model}", f"logging.graph={str(graph).lower()}", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = assert_run_dir(run, graph=graph, by_hydra=True)
    log = (run / "train.log").read_text()
    assert f"Run directory: {run}" in log
    assert f"tensorboard --logdir {run / 'tb'}" in log
    assert f"Test: {metrics['monitor'].split('/', 1)[1]} " in log


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_each_experiment_runs_end_to_end(experiment, tmp_path):
    """Each saved experiment, as `python train.py experiment=NAME`, for a few batches."""
    run = tmp_path / "run"
    few = [
        "trainer.max_epochs=1",
        "trainer.limit_batches=2",
        "logging.progress_bar=false",
        "trainer.max_steps=null",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    ]
    files, env = experiment_inputs(experiment, tmp_path)  # its data's example files, pretrained weights
    proc = run_cli([f"experiment={experiment}", *few, *files, f"hydra.run.dir={run}"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_run_dir(run, graph=False, by_hydra=True)


@REFERENCE_RUN
def test_default_run_reaches_95_percent_test_accuracy(tmp_path):
    run = tmp_path / "run"
    train_in_process(["logging.progress_bar=false"], run)
    assert read_metrics(run)["test/acc"] >= 0.95


def test_run_dirs_are_unique_and_named_safely(tmp_path):
    """Two runs in the same second get two directories; user text in the name is made safe."""
    name = 'my "exp" $HOME; rm'
    procs = [
        run_cli([*FAST, f"name='{name}'", f"paths.output_root={tmp_path / 'outputs'}"], cwd=tmp_path)
        for _ in range(2)
    ]
    assert all(p.returncode == 0 for p in procs), procs[0].stderr[-2000:]
    runs = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        assert run.name.split("_", 1)[1].startswith(f"{DEFAULT['model']}_{DEFAULT['data']}_my_exp_HOME_rm")
        assert all(c.isalnum() or c in "._-" for c in run.name), run.name
        assert (run / "metrics.json").is_file()


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.accumulate_grad_batches=2", "trainer.grad_clip=1.0"],
        ["trainer.precision=bf16"],
        ["trainer.precision=16"],
        ["trainer.max_steps=4", "trainer.limit_batches=null", "trainer.max_epochs=100"],
        ["optimizer=sgd", "scheduler=step"],
        pytest.param(
            ["scheduler=none", "trainer.channels_last=true", "model=simple_cnn"],
            marks=needs("conf/model/simple_cnn.yaml"),
        ),
        ["trainer.deterministic=true"],
    ],
    ids=["accumulate+clip", "bf16", "fp16", "max_steps", "sgd+step", "channels_last", "deterministic"],
)
def test_trainer_options_train(overrides, tmp_path):
    run = tmp_path / "run"
    train_in_process([*FAST, *overrides], run)
    metrics = read_metrics(run)
    assert metrics["steps"] >= 1
    if "trainer.max_steps=4" in overrides:
        assert metrics["steps"] == 4
    if "trainer.accumulate_grad_batches=2" in overrides:
        assert metrics["steps"] == 2  # three batches: one full window of two, then the epoch's remainder
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_same_seed_same_result_different_seed_different(tmp_path):
    """Told by the trained weights, which every task's run has: a detection run tests no loss, and its mAP
    after three batches can be the same whatever the seed."""
    weights, tested = [], []
    for i, seed in enumerate([1, 1, 2]):
        run = tmp_path / f"run{i}"
        train_in_process([*FAST, f"trainer.seed={seed}"], run)
        weights.append(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"])
        tested.append(
            {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k.startswith("test/")}
        )

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(weights[0], weights[1]) and not same(weights[0], weights[2])
    assert tested[0] and tested[0] == tested[1]


@pytest.mark.parametrize(("task", "data", "model"), MISFITS[:1])
def test_a_combination_that_does_not_fit_stops_in_one_line(task, data, model, tmp_path):
    """The first shipped task x data x model that the declarations rule out: one line naming all three."""
    outputs = tmp_path / "outputs"
    proc = run_cli([*FAST, f"task={task}", f"data={data}", f"model={model}", f"paths.output_root={outputs}"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"task={task}" in errors[0] and f"data={data}" in errors[0], out
    assert not outputs.exists() or not any(outputs.rglob("*"))
