"""Multiruns: a grid sweep in one sweep directory, an Optuna search that optimizes what the jobs return,
and the submitit launcher running a job's tasks as DDP ranks (submitit_local here, SLURM on a cluster)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import CONF, FAST, PYTHON, REFERENCE_RUN, REPO, needs, read_metrics, require_extra, run_cli

# The optional parts: the Optuna search and the SLURM launcher, each with its extra (pyproject.toml).
OPTUNA = needs("conf/hparams_search/digits_optuna.yaml")
SLURM = needs("conf/hydra/launcher/slurm.yaml")


def sweep(tmp_path: Path, args: list[str]) -> Path:
    """Run `train.py -m ARGS` with every output under tmp_path; return the one sweep directory it made."""
    roots = [f"paths.output_root={tmp_path / 'outputs'}", f"paths.multirun_root={tmp_path / 'multirun'}"]
    proc = run_cli(["-m", *args, *roots])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Jobs land in the sweep directory only: no stray single-run directory per job.
    assert not (tmp_path / "outputs").exists()
    [day] = (tmp_path / "multirun").iterdir()
    [sweep_dir] = day.iterdir()
    return sweep_dir


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


@REFERENCE_RUN
@needs("conf/model/simple_cnn.yaml")
def test_grid_sweep_puts_each_job_in_one_sweep_dir(tmp_path):
    sweep_dir = sweep(tmp_path, [*FAST, "model=mlp,simple_cnn", "optimizer.lr=1e-3,3e-3"])
    runs = jobs(sweep_dir)
    assert [r.name for r in runs] == ["0", "1", "2", "3"]
    combos = set()
    for run in runs:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        combos.add(tuple(o for o in overrides if o.startswith(("model=", "optimizer.lr="))))
        assert 0.0 <= read_metrics(run)["val/acc_best"] <= 1.0
    assert len(combos) == 4

    # `tensorboard --logdir <sweep dir>` finds one run per job, each with its own training curve.
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))
    mux.Reload()
    scalars = mux.PluginRunToTagToContent("scalars")  # what TensorBoard's SCALARS tab lists
    assert sorted(run for run, tags in scalars.items() if "train/loss" in tags) == [
        f"{i}/tb" for i in range(4)
    ]


@pytest.mark.slow
@OPTUNA
@REFERENCE_RUN
def test_optuna_search_optimizes_what_the_jobs_return(tmp_path):
    require_extra("hydra_plugins.hydra_optuna_sweeper", "sweep")
    fast = [o for o in FAST if not o.startswith("data.batch_size=")]  # the search chooses the batch size
    sweep_dir = sweep(tmp_path, ["hparams_search=digits_optuna", "hydra.sweeper.n_trials=3", *fast])
    runs = jobs(sweep_dir)
    assert len(runs) == 3
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # The search saw each trial's return value: the best of them is the best val/acc_best on disk.
    assert result["best_value"] == pytest.approx(max(read_metrics(r)["val/acc_best"] for r in runs))
    assert set(result["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}


@pytest.mark.slow
@SLURM
def test_submitit_job_with_two_tasks_trains_with_ddp(tmp_path):
    require_extra("hydra_plugins.hydra_submitit_launcher", "slurm")
    # The local executor stands in for SLURM: each task is a process with its own rank, as srun starts them.
    launcher = [
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.timeout_min=5",
    ]
    sweep_dir = sweep(tmp_path, [*launcher, *FAST, "data.batch_size=16"])
    [run] = jobs(sweep_dir)
    log = (run / "train.log").read_text()
    assert "DDP: 2 processes, gloo backend" in log
    digests = re.findall(r"Weights digest on rank \d: (\w+)", log + (run / "train.rank1.log").read_text())
    assert len(digests) == 2 and digests[0] == digests[1]
    assert len(list(run.rglob("events.out.tfevents.*"))) == 1
    assert read_metrics(run)["steps"] == 3


@SLURM
def test_slurm_launcher_config_composes(tmp_path):
    require_extra("hydra_plugins.hydra_submitit_launcher", "slurm")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.gpus_per_node=4",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 4)
    assert launcher.timeout_min > 0 and launcher.nodes == 1


def torchrun_sweep(tmp_path: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path | None]:
    """`torchrun --standalone --nproc_per_node=2 train.py -m ARGS`: every job of the sweep runs on both ranks."""
    roots = [f"paths.output_root={tmp_path / 'outputs'}", f"paths.multirun_root={tmp_path / 'multirun'}"]
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "train.py"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*cmd, "-m", *args, *roots], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    # .runs/ holds the marker by which the two ranks agreed on the sweep directory.
    sweeps = [d for d in (tmp_path / "multirun").glob("*/*") if not d.parent.name.startswith(".")]
    return proc, sweeps[0] if len(sweeps) == 1 else None


@pytest.mark.slow
def test_a_grid_sweep_under_torchrun_keeps_one_process_group(tmp_path):
    """Re-creating the process group in the same workers hung gloo or failed its connect in a later job."""
    proc, sweep_dir = torchrun_sweep(tmp_path, [*FAST, "optimizer.lr=0.005,0.01,0.02"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = jobs(sweep_dir)
    assert [r.name for r in runs] == ["0", "1", "2"]
    for run in runs:
        assert "DDP: 2 processes" in (run / "train.log").read_text()
        assert read_metrics(run)["steps"] == 3


@pytest.mark.slow
@OPTUNA
def test_an_optuna_search_under_torchrun(tmp_path):
    require_extra("hydra_plugins.hydra_optuna_sweeper", "sweep")
    fast = [o for o in FAST if not o.startswith("data.batch_size=")]
    proc, sweep_dir = torchrun_sweep(
        tmp_path, ["hparams_search=digits_optuna", "hydra.sweeper.n_trials=3", *fast]
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(jobs(sweep_dir)) == 3


@OPTUNA
def test_the_search_direction_follows_the_task(tmp_path):
    """No hand-written direction that can disagree with best.pt: each task's mode decides it."""
    require_extra("hydra_plugins.hydra_optuna_sweeper", "sweep")
    from omegaconf import OmegaConf

    from store.rundir import register_resolvers
    from tests.helpers import options, written

    register_resolvers()
    for search in options("hparams_search"):
        for task in options("task"):
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose("train", [f"hparams_search={search}", f"task={task}"], return_hydra_config=True)
            mode = written("task", task)["mode"]
            direction = OmegaConf.select(cfg, "hydra.sweeper.direction")
            assert direction == {"min": "minimize", "max": "maximize"}[mode], (search, task)
