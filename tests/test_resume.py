"""Resume: a run killed with kill -9 mid-epoch and resumed ends bit-identical to the run never killed; the
resumed TensorBoard stream has every step once; the saved config wins over the command line."""

import json
import os
import signal
import subprocess

import pytest
import torch

from setup.config import ConfigError
from store.checkpoint import load_checkpoint
from tests.helpers import (
    PYTHON,
    REFERENCE_RUN,
    REPO,
    event_accumulator,
    first_combo_per_task,
    kill9_once_written,
    read_metrics,
    run_cli,
    train_in_process,
)

# Two epochs of 157 batches of 8 digits; a checkpoint every 25 steps, a log line every 7.
KILL_RUN = [
    "trainer.max_epochs=2",
    "data.batch_size=8",
    "trainer.checkpoint_every_n_steps=25",
    "logging.every_n_steps=7",
    "logging.progress_bar=false",
]


def start_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [PYTHON, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def weights(run) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def scalars(run, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in event_accumulator(run).Scalars(tag)]


@pytest.mark.slow
@REFERENCE_RUN
def test_kill9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start_cli([*KILL_RUN, f"hydra.run.dir={whole}"])  # runs alongside, on the other core
    victim = start_cli([*KILL_RUN, f"hydra.run.dir={killed}"])
    first = killed / "checkpoints" / "step_00000025.pt"
    assert kill9_once_written(victim, first, timeout=120) == -signal.SIGKILL
    state = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 157, "the kill was not mid-epoch"
    assert not (killed / "metrics.json").exists()

    overrides_before = (killed / ".hydra" / "overrides.yaml").read_text()
    resumed = run_cli([f"resume={killed}"])  # the run dir comes from `resume` alone
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert reference.wait(timeout=300) == 0

    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(whole)["test/acc"] == read_metrics(killed)["test/acc"]
    # The same directory, its original config kept, its log continued.
    assert (killed / ".hydra" / "overrides.yaml").read_text() == overrides_before
    assert "Resuming from" in (killed / "train.log").read_text()
    # TensorBoard: every logged step exactly once, with the same values as the run never killed.
    for tag in ("train/loss", "val/acc"):
        got, want = scalars(killed, tag), scalars(whole, tag)
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


@REFERENCE_RUN
def test_resumed_tensorboard_stream_has_no_duplicate_or_missing_steps(tmp_path):
    """A crash after step 12 whose events up to step 20 had reached the disk: the resumed run hides the
    orphans and writes those steps again, once."""
    run = tmp_path / "run"
    overrides = [
        "trainer.max_epochs=1",
        "trainer.limit_batches=20",
        "data.batch_size=16",
        "trainer.checkpoint_every_n_steps=4",
        "logging.every_n_steps=1",
        "logging.progress_bar=false",
    ]
    train_in_process(overrides, run)
    want = scalars(run, "train/loss")
    ckpts = run / "checkpoints"
    os.replace(ckpts / "step_00000012.pt", ckpts / "last.pt")  # as if killed right after step 12
    (run / "metrics.json").unlink()
    train_in_process([f"resume={run}"], run)
    got = scalars(run, "train/loss")
    assert [s for s, _ in got] == list(range(1, 21))
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [s for s, _ in scalars(run, "val/acc")] == [20]


def test_resume_with_a_longer_run_equals_the_longer_run(tmp_path):
    base = ["trainer.limit_batches=6", "data.batch_size=32", "scheduler=none", "logging.progress_bar=false"]
    short, long = tmp_path / "short", tmp_path / "long"
    train_in_process([*base, "trainer.max_epochs=1"], short)
    train_in_process([*base, "trainer.max_epochs=2"], long)
    train_in_process([f"resume={short}", "trainer.max_epochs=2"], short)
    assert read_metrics(short)["steps"] == 12
    a, b = weights(short), weights(long)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Finished: resuming again has nothing to do.
    with pytest.raises(ConfigError, match="already finished its 12 steps"):
        train_in_process([f"resume={short}", "trainer.max_epochs=2"], short)


def test_resume_accepts_run_length_overrides_only(tmp_path):
    run = tmp_path / "run"
    train_in_process(["trainer.max_epochs=1", "trainer.limit_batches=2", "logging.progress_bar=false"], run)
    with pytest.raises(ConfigError, match=r"only trainer\.max_epochs.*\(got: optimizer\.lr=1\)"):
        train_in_process([f"resume={run}", "optimizer.lr=1"], run)
    with pytest.raises(ConfigError, match="nowhere does not exist"):
        train_in_process([f"resume={tmp_path / 'nowhere'}"], tmp_path / "nowhere")


def as_stored_by_an_older_template(run) -> None:
    """Rewrite a run's stored configs (.hydra/config.yaml and each checkpoint's) as the template stored
    them before `declares`: a model's and a task's declarations inside their nodes, no `declares`; the
    schedule in its old module (utils/schedulers.py, before the floors)."""
    import yaml

    def old_layout(cfg: dict) -> dict:
        for group, keys in cfg.pop("declares").items():
            cfg[group] = {**cfg[group], **keys}
        cfg["scheduler"]["_target_"] = cfg["scheduler"]["_target_"].replace("optim.", "utils.", 1)
        return cfg

    own = run / ".hydra" / "config.yaml"
    own.write_text(yaml.safe_dump(old_layout(yaml.safe_load(own.read_text())), sort_keys=False))
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "declares" in state["config"]:  # else rewritten already: best.pt can be a hard link to last.pt
            state["config"] = old_layout(state["config"])
            torch.save(state, path)


def test_a_run_stored_by_an_older_template_evaluates_and_resumes(tmp_path):
    """Its model and task nodes still hold their declarations (no constructor takes them): eval.py
    evaluates it to the numbers it was trained to, and resume= continues it to the run never stopped."""
    base = ["trainer.limit_batches=6", "data.batch_size=32", "scheduler=none", "logging.progress_bar=false"]
    old, whole = tmp_path / "old", tmp_path / "whole"
    train_in_process([*base, "trainer.max_epochs=1"], old)
    train_in_process([*base, "trainer.max_epochs=2"], whole)
    as_stored_by_an_older_template(old)
    stored = load_checkpoint(old / "checkpoints" / "last.pt")["config"]
    assert "declares" not in stored and {"input", "output"} <= set(stored["model"]), stored["model"]
    assert {"target", "output"} <= set(stored["task"]), stored["task"]
    assert stored["scheduler"]["_target_"] == "utils.schedulers.constant"

    best = old / "checkpoints" / "best.pt"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([PYTHON, str(REPO / "eval.py"), f"ckpt={best}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evaluated = json.loads((best.parent / "metrics.json").read_text())
    assert evaluated["test/loss"] == pytest.approx(read_metrics(old)["test/loss"], rel=1e-6)

    train_in_process([f"resume={old}", "trainer.max_epochs=2"], old)
    a, b = weights(old), weights(whole)
    assert read_metrics(old)["steps"] == 12 and all(torch.equal(a[k], b[k]) for k in a)


# Each shipped task but classification (test_kill9_mid_epoch_then_resume_is_bit_identical above), and the
# reference run with parameter groups (optim/params.py): four groups, one with its own lr.
KILL9_CASES = [
    *(pytest.param(*combo, [], id="-".join(combo)) for combo in first_combo_per_task(skip=("classification",))),
    pytest.param("classification", "digits", "mlp", ["param_groups.no_decay_norm_and_bias=true",
                 "param_groups.by_name=[{params: '7.*', lr: 1.0e-3}]"], id="param_groups", marks=REFERENCE_RUN),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("task", "data", "model", "extra"), KILL9_CASES)
def test_every_task_resumes_bit_identically_after_kill9(task, data, model, extra, tmp_path):
    """Each case killed with -9 after its first step checkpoint and resumed: the same weights and the same
    optimizer state."""
    args = [f"task={task}", f"data={data}", f"model={model}", "trainer.max_epochs=2", "trainer.limit_batches=8",
            "data.batch_size=8", "trainer.checkpoint_every_n_steps=3", "logging.every_n_steps=2",
            "logging.progress_bar=false", "logging.images=false", *extra]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start_cli([*args, f"hydra.run.dir={whole}"])
    victim = start_cli([*args, f"hydra.run.dir={killed}"])
    first = killed / "checkpoints" / "step_00000003.pt"
    # A victim that finished before the kill would compare a run with itself: that fails, never passes.
    assert kill9_once_written(victim, first, timeout=180) == -signal.SIGKILL, "the victim finished first"
    assert first.exists() and not (killed / "metrics.json").exists(), "no kill mid-run"
    resumed = run_cli([f"resume={killed}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert reference.wait(timeout=300) == 0
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (load_checkpoint(run / "checkpoints" / "last.pt")["optimizer"] for run in (whole, killed))
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for k, sa in oa["state"].items():
        assert all(torch.equal(v, ob["state"][k][name]) for name, v in sa.items()), k
    monitor = read_metrics(whole)["monitor"].split("/")[1]
    assert read_metrics(whole)[f"test/{monitor}"] == read_metrics(killed)[f"test/{monitor}"]
    # eval.py reports the task's own metrics for the checkpoint, as the run's test did.
    best = killed / "checkpoints" / "best.pt"
    proc = subprocess.run([PYTHON, str(REPO / "eval.py"), f"ckpt={best}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evaluated = json.loads((best.parent / "metrics.json").read_text())
    assert evaluated[f"test/{monitor}"] == pytest.approx(read_metrics(killed)[f"test/{monitor}"], rel=1e-6)
