"""Training control, for real on small data: early stopping, max_time, SLURM's SIGUSR1 and requeue,
validation inside epochs, fine-tuning with init_from, resume from a file or `latest`, the debug modes,
tags and train-time metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from store.checkpoint import load_checkpoint
from tests.helpers import (
    FAST,
    PYTHON,
    REPO,
    event_accumulator,
    needs,
    read_metrics,
    run_cli,
    train_in_process,
)

# A learning rate too small to learn anything: validation stops improving at once.
STALLED = ["optimizer.lr=1e-12", "scheduler=none", "trainer.limit_batches=2", "data.batch_size=16",
           "logging.progress_bar=false"]  # fmt: skip


def error_line(proc) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "[ERROR]" in line or "error:" in line]
    assert len(lines) == 1, out
    return lines[0]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- 1. Early stopping --------------------------------------------------------------------------------


def test_early_stopping_stops_a_run_that_stopped_improving(tmp_path):
    """train.py's wiring: the run stops, says why, and tests best.pt. (The stopper's rule, and its state
    through a checkpoint to the same stopping step: tests/test_training_control_units.py; every field of
    the state resumed bit-identically: tests/test_resume.py.)"""
    whole = tmp_path / "whole"
    train_in_process([*STALLED, "trainer.max_epochs=20", "trainer.early_stopping.patience=2"], whole)
    metrics = read_metrics(whole)
    assert metrics["stopped_early"] is True and metrics["stopped_by"] == "early_stopping"
    assert metrics["epochs"] < 20 and (whole / "checkpoints" / "best.pt").is_file()
    assert "test/acc" in metrics


# --- 2. max_time, and resume= finishing the run bit-identically --------------------------------------------


@pytest.mark.slow
def test_max_time_stops_saves_tests_and_resume_finishes_it_exactly(tmp_path):
    long = [
        "trainer.max_epochs=4",
        "data.batch_size=4",
        "logging.progress_bar=false",
        "logging.every_n_steps=5",
    ]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = subprocess.Popen([PYTHON, str(REPO / "train.py"), *long, f"hydra.run.dir={whole}"], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    proc = run_cli([*long, "trainer.max_time=0.01", f"hydra.run.dir={cut}"])  # 0.6 seconds
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_metrics(cut)
    assert metrics["stopped_by"] == "max_time" and "test/acc" in metrics
    assert metrics["steps"] < 4 * 314, "the budget did not stop the run"
    assert f"Continue with: python train.py resume={cut}" in (cut / "train.log").read_text()
    resumed = run_cli([f"resume={cut}", "trainer.max_time=null"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert reference.wait(timeout=600) == 0
    assert read_metrics(cut)["steps"] == read_metrics(whole)["steps"]
    assert same_weights(whole, cut)


# --- 3. SLURM: SIGUSR1 saves and requeues; the requeued job goes on by itself -------------------------------


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_requeued_job_continues(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    (bin_dir / "scontrol").chmod(0o755)
    outputs = tmp_path / "outputs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}  # fmt: skip
    env.pop("HYDRA_FULL_ERROR", None)
    args = [PYTHON, str(REPO / "train.py"), "trainer.max_steps=600", "data.batch_size=8",
            "logging.every_n_steps=1", "logging.progress_bar=false", f"paths.output_root={outputs}"]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"step 10/", line):
            break
    proc.send_signal(signal.SIGUSR1)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 138, out
    assert calls.read_text().split() == ["requeue", "4242"]
    [run] = [p for p in outputs.glob("*/*") if p.is_dir()]
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 10 <= stopped < 600 and not (run / ".lock").exists()

    # SLURM starts the same command again, with SLURM_RESTART_COUNT=1: it continues this run directory.
    again = subprocess.run(args, cwd=REPO, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert [p for p in outputs.glob("*/*") if p.is_dir()] == [run]
    assert f"(step {stopped})" in (run / "train.log").read_text()
    assert read_metrics(run)["steps"] == 600


# --- 4. Validation inside epochs, limits on validation and test ------------------------------------------


def test_validation_every_n_steps_with_limited_batches(tmp_path):
    run = tmp_path / "run"
    train_in_process([*FAST, "trainer.limit_batches=6", "trainer.val_every_n_steps=2", "trainer.limit_val_batches=1",
                      "trainer.limit_test_batches=2"], run)  # fmt: skip
    acc = event_accumulator(run)
    assert [e.step for e in acc.Scalars("val/acc")] == [2, 4, 6]
    assert (run / "checkpoints" / "best.pt").is_file()
    # One val batch of 32, two test batches of 32: the accuracies are counts over that many samples.
    metrics = read_metrics(run)
    assert metrics["val/acc_last"] * 32 == pytest.approx(round(metrics["val/acc_last"] * 32))
    assert metrics["test/acc"] * 64 == pytest.approx(round(metrics["test/acc"] * 64))


# --- 5. Fine-tuning from a checkpoint ---------------------------------------------------------------------


@pytest.mark.slow
@needs("conf/data/fake.yaml")
def test_init_from_loads_weights_into_a_new_run_and_changes_the_head(tmp_path):
    fake = ["data=fake", "data.dataset.train_size=64", "data.dataset.val_size=32", "data.dataset.test_size=32",
            "data.dataset.in_memory=true"]  # fmt: skip
    source = tmp_path / "source"
    train_in_process([*FAST, *fake], source)
    tuned = tmp_path / "tuned"
    proc = run_cli([*FAST, *fake, "data.num_classes=4", f"init_from={source}", "init_strict=false",
                    f"hydra.run.dir={tuned}"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tuned / "train.log").read_text()
    assert "init_from: loaded" in log and "4" in log
    skipped = [line for line in log.splitlines() if "shape" in line and "init_from" in line]
    assert skipped, log
    # A new run: its own directory, step 0 to its own length, the body's weights from the source.
    state = load_checkpoint(tuned / "checkpoints" / "last.pt")
    assert state["step"] == read_metrics(tuned)["steps"] == 2 and state["model"]["7.weight"].shape[0] == 4
    # A prefix map that renames nothing is refused before training, in one line.
    proc = run_cli([*FAST, *fake, f"init_from={source}", "init_from_map={encoder.:features.}",
                    f"hydra.run.dir={tmp_path / 'mapped'}"])  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert (
        proc.returncode == 2 and len(lines) == 1 and "no key of" in lines[0] and "'encoder.'" in lines[0]
    ), lines
    # A strict load of another head, and what is no checkpoint, are refused in one line: the units'
    # (tests/test_training_control_units.py); any CheckpointError of init_from= is one line: tests/test_cli.py.


@needs("conf/experiment/contrastive_digits.yaml", "conf/experiment/finetune_contrastive.yaml")
def test_a_contrastive_encoder_starts_a_classifier_through_a_prefix_map(tmp_path, caplog):
    """Issue 28's chain: pretrain a few steps, then init_from= with init_from_map into a classifier. Its
    encoder, frozen (a linear probe), keeps the pretrained weights; the log names what was renamed, what was
    left behind (the projector) and what starts fresh (the head)."""
    short = [*FAST, "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    pretrained = tmp_path / "pretrained"
    train_in_process([*short, "experiment=contrastive_digits"], pretrained)
    tuned = tmp_path / "tuned"
    with caplog.at_level("INFO"):
        train_in_process([*short, "experiment=finetune_contrastive", f"init_from={pretrained}",
                          "init_from_map={encoder.:features.}"], tuned)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from:")]
    assert any("renamed: " in line and "encoder.* as features.*" in line for line in lines), lines
    assert any("missing keys (head.1.weight, head.1.bias)" in line for line in lines), lines
    assert any("unexpected keys (projector." in line for line in lines), lines
    theirs = load_checkpoint(pretrained / "checkpoints" / "best.pt")["model"]
    ours = load_checkpoint(tuned / "checkpoints" / "last.pt")["model"]
    encoder = {k.removeprefix("encoder."): v for k, v in theirs.items() if k.startswith("encoder.")}
    # Every weight the optimizer could move: BatchNorm's running statistics follow the new run's data.
    learned = [k for k in encoder if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert learned and all(torch.equal(ours[f"features.{k}"], encoder[k]) for k in learned)
    assert not any(k.startswith("projector.") for k in ours)


# --- 6. Resume every way people try it -------------------------------------------------------------------


@pytest.mark.slow
def test_resume_from_a_checkpoint_file_and_from_latest(tmp_path):
    outputs = tmp_path / "outputs"
    assert run_cli([*FAST, f"paths.output_root={outputs}"]).returncode == 0
    [run] = [p for p in outputs.glob("*/*") if p.is_dir()]
    proc = run_cli([f"resume={run / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_metrics(run)["epochs"] == 2
    (run / "metrics.json").unlink()  # as if it had been stopped: `latest` takes unfinished runs only
    proc = run_cli(["resume=latest", "trainer.max_epochs=3", f"paths.output_root={outputs}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resume=latest: continuing {run}" in (run / "train.log").read_text()
    assert read_metrics(run)["epochs"] == 3
    assert [p for p in outputs.glob("*/*") if p.is_dir()] == [run]


# --- 7. Debug modes -----------------------------------------------------------------------------------


def test_debug_overfit_fits_the_same_batches(tmp_path):
    run = tmp_path / "run"
    train_in_process(["debug=overfit", "logging.progress_bar=false"], run)
    metrics = read_metrics(run)
    assert metrics["val/acc_last"] >= 0.99  # validated on the very batches it trains on
    assert event_accumulator(run).Scalars("train/acc")[-1].value >= 0.99


def test_debug_profile_writes_a_trace_and_the_top_operators(tmp_path):
    run = tmp_path / "outputs" / "run"
    proc = run_cli(["debug=profile", "logging.progress_bar=false", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trace = run / "profile" / "trace.json"
    assert trace.is_file() and json.loads(trace.read_text())["traceEvents"]
    assert re.search(r"aten::\w+", (run / "train.log").read_text())


def test_debug_anomaly_names_the_operation_that_made_a_nan(tmp_path):
    proc = run_cli([*FAST, "debug=anomaly", "optimizer.lr=1e38", "optimizer=sgd", "scheduler=none",
                    f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    line = error_line(proc)
    assert "anomaly detection" in line or "non-finite" in line, line


# --- 8, 9. Tags and train-time metrics -------------------------------------------------------------------


def test_tags_go_everywhere_and_train_metrics_are_logged(tmp_path):
    run = tmp_path / "run"
    proc = run_cli([*FAST, "tags=[baseline,digits]", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_metrics(run)["tags"] == ["baseline", "digits"]
    assert json.loads((run / "env.json").read_text())["tags"] == ["baseline", "digits"]
    assert "tags:\n- baseline\n- digits" in (run / ".hydra" / "config.yaml").read_text()
    acc = event_accumulator(run)
    assert acc.Scalars("train/acc")  # the task's metrics on training batches, at the logging interval
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["tags"].string_value == "baseline,digits"


def test_max_time_before_any_validation_tests_the_current_weights(tmp_path):
    """A budget that ends in the first epoch: no best.pt yet, so the test runs on the weights reached."""
    run = tmp_path / "run"
    train_in_process([*FAST, "trainer.max_time=0.00001"], run)  # 0.6 ms: over after the first step
    metrics = read_metrics(run)
    assert metrics["stopped_by"] == "max_time" and metrics["steps"] < 3
    assert metrics["val/acc_best"] is None and 0.0 <= metrics["test/acc"] <= 1.0
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "checkpoints" / "best.pt").exists()
