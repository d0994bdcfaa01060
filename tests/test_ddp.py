"""DDP: torchrun with two CPU processes (gloo) trains as one process with the same global batch would, in
one run directory with one event stream; all ranks of a launch, and its restarts, agree on that directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from setup.distributed import weights_digest
from setup.loaders import build_dataloaders
from tests.helpers import (
    FAST,
    PYTHON,
    REFERENCE_RUN,
    REPO,
    event_accumulator,
    first_combo_per_task,
    needs,
    read_metrics,
    require_extra,
    run_cli,
)

# No dropout: with the same global batches, one process and two then compute the same thing.
SAME_MATH = [*FAST, "model.dropout=0", "logging.every_n_steps=1"]
DIGEST = re.compile(r"Weights digest on rank (\d+): ([0-9a-f]+)")


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N train.py ARGS`, as docs/scaling.md says to type it."""
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*cmd, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def run_dirs(root: Path) -> list[Path]:
    """Every run directory under an output root (root/DATE/TIME_name); .runs/ holds markers, not runs."""
    return sorted(run for day in root.iterdir() if not day.name.startswith(".") for run in day.iterdir())


def losses(run: Path) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in event_accumulator(run).Scalars("train/loss")]


@REFERENCE_RUN
def test_torchrun_two_processes_train_as_one(tmp_path):
    ddp = torchrun([*SAME_MATH, "data.batch_size=16", f"paths.output_root={tmp_path / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli([*SAME_MATH, "data.batch_size=32", f"paths.output_root={tmp_path / 'single'}"])
    assert single.returncode == 0, single.stderr[-3000:]

    # One run directory, shared by both ranks: rank 0's files, and rank 1's log beside them.
    [run] = run_dirs(tmp_path / "ddp")
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "train.rank1.log").is_file()
    assert "DDP: 2 processes, gloo backend" in (run / "train.log").read_text()
    # One event stream, written by rank 0 alone.
    assert len(list(run.rglob("events.out.tfevents.*"))) == 1

    # Both ranks end with bit-equal weights: each logged a digest of its own, and both equal last.pt's.
    found = dict(DIGEST.findall((run / "train.log").read_text() + (run / "train.rank1.log").read_text()))
    assert set(found) == {"0", "1"}
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert found["0"] == found["1"] == weights_digest(saved.items())

    # 2 ranks x 16 = one process x 32: the same global batches, so the same losses at every step.
    [single_run] = run_dirs(tmp_path / "single")
    ddp_losses, single_losses = losses(run), losses(single_run)
    assert [s for s, _ in ddp_losses] == [s for s, _ in single_losses] == [1, 2, 3]
    for (_, a), (_, b) in zip(ddp_losses, single_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    # Validation and test metrics are summed over the ranks' shards: the whole split, counted once.
    ddp_metrics, single_metrics = read_metrics(run), read_metrics(single_run)
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert ddp_metrics[key] == pytest.approx(single_metrics[key], rel=1e-4), key


@pytest.mark.slow
@needs("conf/hydra/launcher/slurm.yaml")  # with it, the `slurm` extra: submitit
def test_slurm_tasks_started_by_srun_train_with_ddp(tmp_path):
    # Two processes with the variables `srun --ntasks=2` gives its tasks: no torchrun, no submitit launcher.
    require_extra("submitit", "slurm")
    slurm = {"SLURM_JOB_ID": str(os.getpid()), "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}
    slurm |= {"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_NODEID": "0"}
    args = [*FAST, "data.batch_size=16", f"paths.output_root={tmp_path}"]
    tasks = [
        subprocess.Popen(
            [PYTHON, str(REPO / "train.py"), *args],
            cwd=REPO,
            env={**os.environ, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outputs = [t.communicate(timeout=300)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    [run] = run_dirs(tmp_path)
    assert "DDP: 2 processes, gloo backend" in (run / "train.log").read_text()
    found = dict(DIGEST.findall((run / "train.log").read_text() + (run / "train.rank1.log").read_text()))
    assert set(found) == {"0", "1"} and found["0"] == found["1"]
    assert len(list(run.rglob("events.out.tfevents.*"))) == 1


def resolve_in_process(root: Path, env: dict) -> subprocess.Popen:
    """A fresh process (as each torchrun rank is) that resolves the run directory and prints it."""
    code = "import sys; from store.rundir import unique_run_dir; print(unique_run_dir(sys.argv[1], 'mlp', 'digits'))"
    launcher_vars = ("TORCHELASTIC_RUN_ID", "RANK", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")
    clean = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        cwd=REPO,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def resolve_all(root: Path, envs: list[dict]) -> list[str]:
    procs = [resolve_in_process(root, env) for env in envs]  # started together: they race for the name
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return outs


def test_ranks_of_one_launch_share_a_run_dir_and_a_restart_finds_it(tmp_path):
    launch = [{"TORCHELASTIC_RUN_ID": "job-a", "RANK": str(r)} for r in range(4)]
    ranks = resolve_all(tmp_path, launch)
    assert len(set(ranks)) == 1
    # A restart of the same launch (torchrun --max-restarts, or the same --rdzv-id) finds it again.
    assert resolve_all(tmp_path, launch[:2]) == ranks[:2]
    # Another launch, a SLURM job's tasks, and a plain run each get a directory of their own.
    other = resolve_all(tmp_path, [{"TORCHELASTIC_RUN_ID": "job-b"}])
    slurm = resolve_all(
        tmp_path, [{"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_PROCID": str(r)} for r in (0, 1)]
    )
    alone = resolve_all(tmp_path, [{}])
    assert len(set(slurm)) == 1
    assert len({ranks[0], other[0], slurm[0], alone[0]}) == 4
    # The ranks that lost the race removed the directories they had made: one per launch is left.
    assert len(run_dirs(tmp_path)) == 4


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, 2),
        # submitit's local executor inside a SLURM allocation: its own task id wins over the shell's.
        ({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_GLOBALID": "1", "SLURM_PROCID": "0"}, 1),
    ],
)
def test_other_ranks_keep_off_rank_zeros_files(monkeypatch, env, rank):
    from store.rundir import on_main, process_rank, rank_log

    for name in ("RANK", "SLURM_PROCID", "SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_GLOBALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert process_rank() == rank
    assert rank_log("train.log") == ("train.log" if rank == 0 else f"train.rank{rank}.log")
    assert on_main(".hydra") == (".hydra" if rank == 0 else None)


def test_evaluation_shards_count_every_sample_once():
    # Training pads shards to equal length (DDP needs equal steps); validation and test must not, or a
    # sample would count twice in the metrics that are summed over ranks.
    from data.splits import Splits

    data = TensorDataset(torch.randn(11, 1, 2, 2), torch.arange(11))
    splits = Splits(train=data, val=data, test=data)
    shards = [
        build_dataloaders(splits, 4, 0, seed=0, pin_memory=False, rank=r, world_size=3) for r in range(3)
    ]
    val = sorted(int(y) for loaders in shards for _, ys in loaders.val for y in ys)
    assert val == list(range(11))
    train_sizes = [sum(len(ys) for _, ys in loaders.train) for loaders in shards]
    assert len(set(train_sizes)) == 1  # equal steps on every rank


@pytest.mark.slow
@pytest.mark.parametrize(("task", "data", "model"), first_combo_per_task(skip=("classification",)))
def test_every_task_trains_under_torchrun(task, data, model, tmp_path):
    """The task's metric sums are summed over ranks; every rank ends with the same weights."""
    proc = torchrun([*FAST, f"task={task}", f"data={data}", f"model={model}", "data.batch_size=8",
                     f"paths.output_root={tmp_path / 'ddp'}"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [run] = run_dirs(tmp_path / "ddp")
    log = (run / "train.log").read_text() + (run / "train.rank1.log").read_text()
    digests = [d for _, d in DIGEST.findall(log)]
    assert len(digests) == 2 and digests[0] == digests[1]
    metrics = read_metrics(run)
    assert metrics["steps"] == 3 and metrics["monitor"].replace("val/", "test/") in metrics
