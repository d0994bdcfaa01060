"""Resume: a run killed with kill -9 mid-epoch and resumed ends bit-identical to the run never killed; the
resumed TensorBoard stream has every step once; the saved config wins over the command line."""

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
    first_quick,
    kill9_once_written,
    needs,
    read_metrics,
    train_in_process,
)


def weights(run) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def scalars(run, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in event_accumulator(run).Scalars(tag)]


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
    tested = {k: v for k, v in read_metrics(old).items() if k.startswith("test/")}  # no loss in detection
    assert tested and {k: evaluated[k] for k in tested} == pytest.approx(tested, rel=1e-6)

    train_in_process([f"resume={old}", "trainer.max_epochs=2"], old)
    a, b = weights(old), weights(whole)
    assert read_metrics(old)["steps"] == 12 and all(torch.equal(a[k], b[k]) for k in a)


# --- kill -9 and resume, bit-identical: one matrix over the parts and the features that keep state -------

# Two epochs of 8 batches of 8, a checkpoint every 3 steps (each mid-epoch), validation on 2 batches; the
# test split whole, so that eval.py (which has no limit) finds the run's own test numbers.
KILL_RUN = {
    "trainer.max_epochs": "2",
    "trainer.limit_batches": "8",
    "data.batch_size": "8",
    "trainer.checkpoint_every_n_steps": "3",
    "trainer.limit_val_batches": "2",
    "logging.every_n_steps": "2",
    "logging.progress_bar": "false",
    "logging.images": "false",
}


@dataclass(frozen=True)
class Case:
    """A run of the matrix: its overrides (over KILL_RUN); `setup` and `check`, "module:function" names
    imported only when the case runs (a project without the part has neither the case nor, maybe, the
    module): setup(tmp_path) -> (the checkout to run in, more overrides[, environment variables]), e.g. a
    fork's copy of the template; check(whole, killed), what the part asserts beyond the matrix, on the two
    finished runs."""

    overrides: dict[str, str]
    setup: str | None = None
    check: str | None = None


def named(name: str):
    import importlib

    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def start(root: Path, args: list[str], extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([PYTHON, "train.py", *args], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def run_in(root: Path, script: str, *args: str, extra_env: dict | None = None) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    for name in ("HYDRA_FULL_ERROR", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    done = subprocess.run(
        [PYTHON, script, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"python {script} {' '.join(args)}:\n{(done.stdout + done.stderr)[-3000:]}"


def assert_same(a, b, where: str = "last.pt") -> None:
    """Equal to the bit: every tensor, number and container of two checkpoints (their config aside: it
    names each run's own directory)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for key in a:
            if (where, key) != ("last.pt", "config"):
                assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def without_clock(metrics: dict) -> dict:
    """metrics.json but for what the clock measures (train_seconds, samples_per_s, tokens_per_s, ...)."""
    return {k: v for k, v in metrics.items() if not k.endswith(("_seconds", "_per_s"))}


def kill9_and_resume(
    root: Path, args: list[str], tmp_path: Path, env: dict | None = None
) -> tuple[Path, Path]:
    """A run killed with -9 right after its first step checkpoint and resumed, beside the same run never
    killed: the same directory goes on (its config and overrides kept, its log continued), and both end
    with the same checkpoint, metrics, TensorBoard steps and values, and eval.py numbers."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start(root, [*args, f"hydra.run.dir={whole}"], env)  # alongside, on the other core
    victim = start(root, [*args, f"hydra.run.dir={killed}"], env)
    every = next(int(a.split("=")[1]) for a in args if a.startswith("trainer.checkpoint_every_n_steps="))
    first = killed / "checkpoints" / f"step_{every:08d}.pt"
    # A victim that finished before the kill would compare a run with itself: that fails, never passes.
    assert kill9_once_written(victim, first, timeout=180) == -signal.SIGKILL, "the victim finished first"
    assert first.exists() and not (killed / "metrics.json").exists(), "no kill mid-run"
    state = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert state["batch_in_epoch"] > 0, "the kill was not mid-epoch"
    overrides = (killed / ".hydra" / "overrides.yaml").read_text()

    run_in(root, "train.py", f"resume={killed}", extra_env=env)  # the run dir comes from `resume` alone
    assert reference.wait(timeout=300) == 0
    assert (killed / ".hydra" / "overrides.yaml").read_text() == overrides
    assert "Resuming from" in (killed / "train.log").read_text()
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (whole, killed))
    assert_same(a, b)
    metrics = read_metrics(whole)
    assert without_clock(metrics) == without_clock(read_metrics(killed))
    # TensorBoard: every logged step once, with the values of the run never killed.
    for tag in ("train/loss", metrics["monitor"]):
        got, want = scalars(killed, tag), scalars(whole, tag)
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag
    # eval.py tests best.pt (its moving average, if any) to the run's own final test numbers.
    best = killed / "checkpoints" / "best.pt"
    run_in(root, "eval.py", f"ckpt={best}", extra_env=env)
    evaluated = read_metrics(best.parent)
    for key in (k for k in metrics if k.startswith("test/")):
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key
    return whole, killed


def cases() -> list:
    """Each task (its first trainable combination, from conf/ on disk), then the features that keep their
    own state or run the loop differently, each where its files are there."""
    tasks = [
        pytest.param(Case({"task": t, "data": d, "model": m}), id=t) for t, d, m in first_combo_per_task()
    ]
    return [
        *tasks,
        pytest.param(  # DataLoader workers with random augmentation (their RNG streams resumed)
            Case({"data.num_workers": "2", "data.batch_size": "4"}, setup="tests.test_resume:cifar10_files"),
            id="workers",
            marks=needs("conf/data/cifar10.yaml", "conf/model/simple_cnn.yaml"),
        ),
        pytest.param(  # the moving average of the weights: saved, resumed, evaluated
            Case({"trainer.ema_decay": "0.9"}, check="tests.test_ema:averaged"),
            id="ema",
            marks=needs(*REFERENCE_RUN.args, "tests/test_ema.py"),
        ),
        pytest.param(  # a user's task and data dropped into a copy (docs/tasks.md)
            Case(
                {
                    "trainer.max_epochs": "5",
                    "trainer.limit_batches": "null",
                    "data.batch_size": "64",
                    "trainer.checkpoint_every_n_steps": "7",
                },
                setup="tests.test_user_task:user_fork_in",
                check="tests.test_user_task:learned",
            ),
            id="user_task",
            marks=needs("tests/user_task/multilabel.py", "tests/test_user_task.py"),
        ),
        pytest.param(  # a batch that is no tensor, a loss dict, no validation loss
            Case(
                {
                    "trainer.max_epochs": "3",
                    "trainer.limit_batches": "null",
                    "data.batch_size": "32",
                    "trainer.checkpoint_every_n_steps": "10",
                    "logging.every_n_steps": "4",
                },
                setup="tests.test_any_batch:bumps_fork_in",
                check="tests.test_any_batch:logs_each_loss",
            ),
            id="any_batch",
            marks=needs("tests/user_task/bumps.py", "tests/test_any_batch.py"),
        ),
        pytest.param(  # parameter groups (optim/params.py): four groups, one with its own lr
            Case(
                {
                    "param_groups.no_decay_norm_and_bias": "true",
                    "param_groups.by_name": "[{params: '7.*', lr: 1.0e-3}]",
                }
            ),
            id="param_groups",
            marks=needs(*REFERENCE_RUN.args),
        ),
        pytest.param(  # docs/loop.md's second model and optimizer
            Case(
                {"trainer.critic_weight": "0.1"},
                setup="tests.test_loop_doc:critic_checkout_in",
                check="tests.test_loop_doc:critic_stepped",
            ),
            id="loop_doc",
            marks=needs(*REFERENCE_RUN.args, "docs/loop.md", "tests/test_loop_doc.py"),
        ),
    ]


def cifar10_files(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    from tests.test_datasets import write_cifar10

    write_cifar10(tmp_path / "data", n_per_batch=24)  # 120 training images; crop + flip in the workers
    overrides = {"data": "cifar10", "model": "simple_cnn", "paths.data_dir": str(tmp_path / "data"),
                 "data.dataset.download": "false"}  # fmt: skip
    return REPO, overrides


@pytest.mark.parametrize("case", first_quick(cases()))
def test_kill9_then_resume_is_bit_identical(case, tmp_path):
    root, overrides, env = (*named(case.setup)(tmp_path), {})[:3] if case.setup else (REPO, {}, {})
    args = {**KILL_RUN, **overrides, **case.overrides}
    whole, killed = kill9_and_resume(root, [f"{k}={v}" for k, v in args.items()], tmp_path, env)
    if case.check:
        named(case.check)(whole, killed)
