"""The building blocks of training control, each on its own and for real: early stopping, the time budget,
SLURM requeue (through a fake `scontrol` executable on PATH), what `resume=` names, `init_from` weights,
the profiler and the debug configs: their logic, with no run. train.py's wiring of them, in real runs:
tests/test_training_control.py."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from setup.config import ConfigError
from store.checkpoint import CheckpointError, save_checkpoint
from tests.helpers import REPO, compose_config, needs


@pytest.fixture
def one_thread():
    """Small models on a shared 2-core machine: one intra-op thread, never spinning against a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- early stopping ---------------------------------------------------------------------------------------


def stop_index(stopper, values, first_step: int = 0) -> int | None:
    for i, v in enumerate(values):
        if stopper.update(v, step=first_step + i):
            return first_step + i
    return None


def test_early_stopping_stops_after_patience_validations_without_improvement():
    from loop.earlystop import EarlyStopping

    stopper = EarlyStopping(patience=3, min_delta=0.0, mode="min")
    assert stop_index(stopper, [1.0, 0.9, 0.95, 0.9, 0.91, 0.92]) == 4  # 0.9 again is no improvement
    assert stopper.best == 0.9 and stopper.best_step == 1 and stopper.wait == 3 and stopper.should_stop

    # An improvement resets the count.
    stopper = EarlyStopping(patience=2, min_delta=0.0, mode="min")
    assert stop_index(stopper, [1.0, 1.1, 0.8, 0.9, 0.7, 0.75, 0.6]) is None


def test_early_stopping_min_delta_and_max_mode():
    from loop.earlystop import EarlyStopping

    # max mode: gains of 0.005 are not improvements when min_delta is 0.01.
    stopper = EarlyStopping(patience=2, min_delta=0.01, mode="max")
    assert stop_index(stopper, [0.5, 0.505, 0.51, 0.52]) == 2
    assert stopper.best == 0.5
    # Exactly min_delta better is not "more than" min_delta.
    stopper = EarlyStopping(patience=1, min_delta=0.25, mode="min")
    assert stop_index(stopper, [1.0, 0.75]) == 1
    stopper = EarlyStopping(patience=1, min_delta=0.25, mode="min")
    assert stop_index(stopper, [1.0, 0.7, 0.4]) is None


def test_early_stopping_nan_is_no_improvement_and_disabled_never_stops():
    from loop.earlystop import EarlyStopping

    stopper = EarlyStopping(patience=2, min_delta=0.0, mode="min")
    assert stop_index(stopper, [math.nan, 1.0, math.nan, math.nan]) == 3
    assert stopper.best == 1.0
    stopper = EarlyStopping(patience=2, mode="max")
    assert stop_index(stopper, [math.nan, math.nan]) == 1 and stopper.best is None
    assert "no value yet" in stopper.describe()

    off = EarlyStopping(patience=None, min_delta=0.0, mode="min")
    assert not off.enabled and stop_index(off, [1.0] + [2.0] * 50) is None
    assert off.best == 1.0 and "off" in off.describe()


def test_early_stopping_resumed_from_its_checkpointed_state_stops_at_the_same_step(tmp_path):
    from loop.earlystop import EarlyStopping

    values = [0.9, 0.8, 0.82, 0.79, 0.81, 0.80, 0.795, 0.83]
    whole = EarlyStopping(patience=3, min_delta=0.005, mode="min")
    expected = stop_index(whole, values)
    assert expected == 6
    for cut in range(1, len(values)):
        first = EarlyStopping(patience=3, min_delta=0.005, mode="min")
        assert stop_index(first, values[:cut]) is None or cut > expected
        if cut > expected:
            continue
        # Through a real checkpoint file, read as train.py reads one.
        save_checkpoint({"model": {}, "early_stopping": first.state_dict()}, tmp_path / "last.pt")
        state = torch.load(tmp_path / "last.pt", weights_only=True)["early_stopping"]
        second = EarlyStopping(patience=3, min_delta=0.005, mode="min")
        second.load_state_dict(state)
        assert stop_index(second, values[cut:], first_step=cut) == expected
        assert second.state_dict() == whole.state_dict()
    # A checkpoint from before early stopping existed: a fresh start.
    fresh = EarlyStopping(patience=3, mode="min")
    fresh.load_state_dict(None)
    assert fresh.state_dict() == EarlyStopping(patience=3, mode="min").state_dict()


def test_early_stopping_describe_says_why_in_one_line():
    from loop.earlystop import EarlyStopping

    stopper = EarlyStopping(patience=3, min_delta=0.001, mode="min", monitor="val/rmse")
    stopper.update(0.6, step=60)
    stopper.update(0.52, step=120)
    assert "has not improved by more than 0.001 for 0 of 3 validations" in stopper.describe()
    for step in (180, 240, 300):
        stopped = stopper.update(0.5195, step=step)
    assert stopped and stopper.stopped_step == 300
    assert stopper.describe() == (
        "early stopping: val/rmse did not improve by more than 0.001 for 3 validations (best 0.52 at step 120)"
    )
    one = EarlyStopping(patience=1, mode="max", monitor="val/acc")
    one.update(0.9, step=5)
    one.update(0.8, step=10)
    assert one.describe() == "early stopping: val/acc did not improve for 1 validation (best 0.9 at step 5)"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"patience": 0}, "patience"),
        ({"patience": -2}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"patience": True}, "patience"),
        ({"patience": 3, "min_delta": -0.1}, "min_delta"),
        ({"patience": 3, "min_delta": math.inf}, "min_delta"),
        ({"patience": 3, "mode": "maximize"}, "mode"),
    ],
)
def test_early_stopping_refuses_bad_settings_in_one_line(kwargs, key):
    from loop.earlystop import EarlyStopping

    with pytest.raises(ConfigError) as err:
        EarlyStopping(**{"min_delta": 0.0, "mode": "min", **kwargs})
    assert key in str(err.value) and "\n" not in str(err.value)


# --- time budget ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        (None, None),
        ("00:30:00", 1800.0),
        ("1:30:00", 5400.0),
        ("48:00:00", 172800.0),
        ("00:00:00:10", 10.0),
        ("01:02:03:04", 93784.0),
        (90, 5400.0),
        (0.5, 30.0),
        ("90", 5400.0),
        ("0.5", 30.0),
        (" 2 ", 120.0),
    ],
)
def test_parse_max_time_accepts_clock_times_and_minutes(value, seconds):
    from loop.timebudget import parse_max_time

    assert parse_max_time(value) == seconds


@pytest.mark.parametrize(
    "value",
    [-1, 0, 0.0, "0", "-5", "1:2", "abc", "25:61:00", "00:00:60", "1:24:00:00", "", "  ", "00:00:00", "nan",
     "inf", math.nan, True, "1:00:00:00:00", "1h", [1]],
)  # fmt: skip
def test_parse_max_time_refuses_anything_else_in_one_line(value):
    from loop.timebudget import parse_max_time

    with pytest.raises(ConfigError) as err:
        parse_max_time(value)
    text = str(err.value)
    assert text.startswith("trainer.max_time=") and "HH:MM:SS" in text and "DD:HH:MM:SS" in text
    assert "\n" not in text


def test_deadline_expires_and_carries_its_use_across_a_resume():
    from loop.timebudget import Deadline, format_seconds

    never = Deadline(None)
    assert not never.enabled and not never.expired() and never.remaining() is None
    assert never.describe() == "time budget: none"

    hour = Deadline(3600)
    assert not hour.expired() and 0 < hour.remaining() <= 3600
    deadline = Deadline(0.2)  # expired after a sleep longer than it, whatever the machine's load
    time.sleep(0.25)
    assert deadline.expired() and deadline.remaining() == 0.0 and deadline.used() >= 0.25

    # A resumed run: 100 s of a 100.1 s budget were used before; it is spent almost at once.
    resumed = Deadline(100.1, already_used=100.0)
    assert resumed.remaining() <= 0.1 and resumed.used() >= 100.0
    time.sleep(0.15)
    assert resumed.expired()
    assert Deadline(60, already_used=61).expired()
    assert not Deadline(3600, already_used=60).expired()
    assert "0:01:00 used before this resume" in Deadline(3600, already_used=60).describe()
    assert format_seconds(5400) == "1:30:00" and format_seconds(93784) == "1 day, 2:03:04"


# --- SLURM ------------------------------------------------------------------------------------------------

FAKE_SCONTROL = """#!/bin/sh
# A stand-in for SLURM's scontrol: records its arguments, answers as FAKE_SCONTROL_MODE says.
printf '%s\\n' "$@" > "$FAKE_SCONTROL_LOG"
case "$FAKE_SCONTROL_MODE" in
  fail) echo "scontrol: error: Requested operation is presently disabled for job $2" >&2; exit 1 ;;
  hang) exec sleep 10 ;;
esac
exit 0
"""


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(FAKE_SCONTROL)
    script.chmod(0o755)
    calls = tmp_path / "scontrol.args"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCONTROL_LOG", str(calls))
    monkeypatch.setenv("FAKE_SCONTROL_MODE", "ok")
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_slurm_job_ids(fake_scontrol, monkeypatch):
    from system.slurm import restart_count, slurm_job_id

    assert slurm_job_id() is None and restart_count() == 0
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm_job_id() == "4242" and restart_count() == 2
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert slurm_job_id() == "4200_7"  # what scontrol takes for a task of a job array


def test_requeue_calls_scontrol_with_the_job_id(fake_scontrol, monkeypatch, caplog):
    from system.slurm import requeue

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    log = logging.getLogger("test.slurm")
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        assert requeue(log) is True
    assert fake_scontrol.read_text().split() == ["requeue", "4242"]
    assert len(caplog.records) == 1 and "4242 requeued" in caplog.records[0].getMessage()

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert requeue(log) is True
    assert fake_scontrol.read_text().split() == ["requeue", "4200_7"]


def test_requeue_failure_is_one_warning_with_scontrols_reason(fake_scontrol, monkeypatch, caplog):
    from system.slurm import requeue

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("FAKE_SCONTROL_MODE", "fail")
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        assert requeue(logging.getLogger("test.slurm")) is False
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "exit code 1" in record.getMessage() and "presently disabled" in record.getMessage()


def test_requeue_gives_up_after_its_timeout(fake_scontrol, monkeypatch, caplog):
    import system.slurm

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("FAKE_SCONTROL_MODE", "hang")
    monkeypatch.setattr(system.slurm, "REQUEUE_TIMEOUT_S", 0.5)  # 30 s in real use
    # The fake scontrol sleeps 10 s, then would exit 0 (requeued): False means the timeout ended the wait.
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        assert system.slurm.requeue(logging.getLogger("test.slurm")) is False
    assert "no answer" in caplog.records[0].getMessage()


def test_requeue_outside_slurm_or_without_scontrol(fake_scontrol, monkeypatch, tmp_path, caplog):
    from system.slurm import requeue

    log = logging.getLogger("test.slurm")
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        assert requeue(log) is False
    assert "not a SLURM job" in caplog.records[-1].getMessage()
    assert not fake_scontrol.exists()  # never called

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        assert requeue(log) is False
    assert "scontrol is not on PATH" in caplog.records[-1].getMessage()


# --- resume= targets --------------------------------------------------------------------------------------


def make_run(root: Path, day: str, stamp: str, last: bool = True, finished: bool = False) -> Path:
    run = root / day / stamp
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("{}\n")
    (run / "checkpoints").mkdir()
    if last:
        (run / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    if finished:
        (run / "metrics.json").write_text("{}\n")
    return run


def test_resume_target_takes_a_run_dir_a_checkpoint_file_or_its_folder(tmp_path, monkeypatch):
    from store.resume_target import resume_target

    run = make_run(tmp_path / "outputs", "2026-11-26", "15-45-04_mlp_digits")
    for name in ("best.pt", "step_00000120.pt"):
        (run / "checkpoints" / name).write_bytes(b"checkpoint")
    assert resume_target(str(run), "outputs") == (run, run / "checkpoints" / "last.pt")
    for name in ("last.pt", "best.pt", "step_00000120.pt"):
        run_dir, checkpoint = resume_target(str(run / "checkpoints" / name), "outputs")
        assert (run_dir, checkpoint) == (run, run / "checkpoints" / name)
    assert resume_target(str(run / "checkpoints"), "outputs").run_dir == run
    # Relative paths and ~ are made absolute; the pieces stay Paths.
    monkeypatch.chdir(run / "checkpoints")
    assert resume_target("best.pt", "outputs") == (run, run / "checkpoints" / "best.pt")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resume_target("~/outputs/2026-11-26/15-45-04_mlp_digits", "x").run_dir == run


def test_resume_target_refuses_what_is_no_run_in_one_line(tmp_path):
    from store.resume_target import find_resume_target, resume_target

    run = make_run(tmp_path / "outputs", "2026-11-26", "15-45-04_mlp_digits")
    plain_dir = tmp_path / "notes"
    plain_dir.mkdir()
    stray = tmp_path / "weights.pt"
    stray.write_bytes(b"x")
    (run / "other").mkdir()
    (run / "other" / "copy.pt").write_bytes(b"x")
    cases = {
        str(plain_dir): "not a run directory",
        str(tmp_path / "missing"): "does not exist",
        str(stray): "checkpoints/ folder",
        str(run / "other" / "copy.pt"): "checkpoints/ folder",
        str(run / ".hydra" / "config.yaml"): "checkpoints/ folder",
    }
    for value, words in cases.items():
        with pytest.raises(ConfigError) as err:
            resume_target(value, str(tmp_path / "outputs"))
        text = str(err.value)
        assert text.startswith(f"resume={value}: ") and words in text and "\n" not in text, text
        assert find_resume_target(value, str(tmp_path / "outputs")) is None
    with pytest.raises(ConfigError, match="init_from="):
        resume_target(str(stray), "outputs")
    assert find_resume_target(None, "outputs") is None


def test_resume_latest_picks_the_newest_unfinished_run(tmp_path):
    from store.resume_target import latest_unfinished_run, resume_target

    root = tmp_path / "outputs"
    make_run(root, "2026-11-25", "23-59-59_mlp_digits")
    older_today = make_run(root, "2026-11-26", "09-00-00_mlp_digits")
    make_run(root, "2026-11-26", "12-00-00_mlp_digits", finished=True)  # finished: skipped
    make_run(root, "2026-11-26", "13-00-00_mlp_digits", last=False)  # no checkpoint yet: skipped
    (root / "2026-11-26" / "14-00-00_not_a_run").mkdir()  # no checkpoints/ at all
    (root / "notes").mkdir()  # not a day
    (root / ".runs").mkdir()
    assert resume_target("latest", str(root)) == (older_today, older_today / "checkpoints" / "last.pt")

    # Two runs in the same second: the one whose last.pt is newer.
    a = make_run(root, "2026-11-26", "10-00-00_mlp_digits")
    b = make_run(root, "2026-11-26", "10-00-00_mlp_digits-2")
    os.utime(b / "checkpoints" / "last.pt", (1, 1))
    assert latest_unfinished_run(root) == a
    os.utime(a / "checkpoints" / "last.pt", (0, 0))
    assert latest_unfinished_run(root) == b

    # A finished run resumed to train longer, then stopped: its last.pt is newer than metrics.json.
    extended = make_run(root, "2026-11-26", "11-00-00_mlp_digits", finished=True)
    assert latest_unfinished_run(root) == b
    os.utime(extended / "metrics.json", (100, 100))
    assert latest_unfinished_run(root) == extended

    # A run that a live process is training right now is not resumable.
    from system.lock import RunLock

    with RunLock(extended):
        assert latest_unfinished_run(root) == b
    (extended / ".lock").write_text("999999999 " + os.uname().nodename + "\n")  # left by a killed run
    assert latest_unfinished_run(root) == extended


def test_resume_latest_without_a_run_says_where_it_looked(tmp_path):
    from store.resume_target import resume_target

    root = tmp_path / "outputs"
    with pytest.raises(ConfigError) as err:
        resume_target("latest", str(root))
    assert str(root) in str(err.value) and "does not exist" in str(err.value)
    make_run(root, "2026-11-26", "12-00-00_mlp_digits", finished=True)
    with pytest.raises(ConfigError) as err:
        resume_target("latest", str(root))
    text = str(err.value)
    assert text.startswith(f"resume=latest: no unfinished run under {root}") and "\n" not in text


def test_describe_resume_names_the_run_its_step_and_age(tmp_path):
    from store.resume_target import ago, describe_resume, resume_target

    run = make_run(tmp_path / "outputs", "2026-11-26", "12-00-00_mlp_digits")
    last = run / "checkpoints" / "last.pt"
    os.utime(last, (1000, 1000))
    target = resume_target("latest", str(tmp_path / "outputs"))
    line = describe_resume("latest", target, step=120, now=1000 + 3 * 3600 + 5 * 60)
    assert line == f"resume=latest: continuing {run} (step 120, last.pt saved 3 h 5 min ago)"
    assert ago(45) == "45 s" and ago(720) == "12 min" and ago(2 * 86400 + 4 * 3600) == "2 days 4 h"


def test_the_startup_modules_import_no_torch():
    code = (
        "import sys\n"
        "import store.resume_target, loop.timebudget, system.slurm, loop.earlystop\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# --- init_from --------------------------------------------------------------------------------------------


# The init_from tests load checkpoints of the MLP, a model with keys that shift with its depth.
USES_MLP = needs("conf/model/mlp.yaml")


def mlp(num_outputs: int = 10, hidden=(32, 16), seed: int = 0):
    from models.mlp import MLP

    torch.manual_seed(seed)
    return MLP([1, 8, 8], num_outputs, hidden_dims=list(hidden))


def checkpoint_of(model, path: Path) -> Path:
    save_checkpoint({"model": model.state_dict(), "step": 7}, path)
    return path


@USES_MLP
def test_init_from_loads_every_weight_of_the_same_model(tmp_path):
    from store.init_from import load_initial_weights

    source = mlp(seed=1)
    path = checkpoint_of(source, tmp_path / "a.pt")
    target = mlp(seed=2)
    result = load_initial_weights(target, path, strict=True)
    assert result == {
        "path": str(path),
        "missing": [],
        "unexpected": [],
        "skipped": [],
        "loaded": len(source.state_dict()),
        "renamed": [],
    }
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@USES_MLP
def test_init_from_a_run_directory_takes_best_then_last(tmp_path):
    from store.init_from import load_initial_weights

    run = tmp_path / "run"
    last, best = mlp(seed=1), mlp(seed=2)
    checkpoint_of(last, run / "checkpoints" / "last.pt")
    assert load_initial_weights(mlp(seed=3), run, strict=True)["path"] == str(run / "checkpoints" / "last.pt")
    checkpoint_of(best, run / "checkpoints" / "best.pt")
    target = mlp(seed=3)
    assert load_initial_weights(target, run, strict=True)["path"] == str(run / "checkpoints" / "best.pt")
    assert torch.equal(target[-1].weight, best[-1].weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without checkpoints/best.pt"):
        load_initial_weights(mlp(), tmp_path / "empty", strict=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_initial_weights(mlp(), tmp_path / "nowhere.pt", strict=True)


@USES_MLP
def test_init_from_another_head_strict_refuses_lenient_loads_the_body(tmp_path):
    from store.init_from import load_initial_weights

    source = mlp(num_outputs=10, seed=1)
    path = checkpoint_of(source, tmp_path / "a.pt")
    with pytest.raises(CheckpointError) as err:
        load_initial_weights(mlp(num_outputs=3), path, strict=True)
    text = str(err.value)
    assert "init_strict=false" in text and "\n" not in text
    assert "7.weight [10, 16] in the checkpoint, [3, 16] here" in text

    target = mlp(num_outputs=3, seed=2)
    fresh_head = target[-1].weight.detach().clone()
    result = load_initial_weights(target, path, strict=False)
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["skipped"] == [("7.weight", (10, 16), (3, 16)), ("7.bias", (10,), (3,))]
    assert result["loaded"] == 4
    assert torch.equal(target[1].weight, source[1].weight) and torch.equal(target[4].bias, source[4].bias)
    assert torch.equal(target[-1].weight, fresh_head)  # the new head keeps its initialization


@USES_MLP
def test_init_from_missing_and_unexpected_keys(tmp_path, caplog):
    from store.init_from import load_initial_weights, log_summary

    path = checkpoint_of(mlp(hidden=(32, 16)), tmp_path / "a.pt")
    deeper = mlp(hidden=(32, 16, 16))  # one more hidden layer: keys shift
    with pytest.raises(CheckpointError, match="missing"):
        load_initial_weights(deeper, path, strict=True)
    result = load_initial_weights(deeper, path, strict=False)
    assert result["missing"] == ["10.weight", "10.bias"]
    assert result["skipped"] == [("7.weight", (10, 16), (16, 16)), ("7.bias", (10,), (16,))]
    assert result["loaded"] == 4

    shallower = mlp(hidden=(32,))
    result = load_initial_weights(shallower, path, strict=False)
    assert result["unexpected"] == ["7.weight", "7.bias"]
    with caplog.at_level(logging.INFO, logger="test.init"):
        log_summary(result, logging.getLogger("test.init"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"init_from: loaded 2 of this model's 4 tensors from {path}"
    assert len(lines) == 3
    assert lines[1].startswith("init_from: 2 unexpected keys (7.weight, 7.bias): in the checkpoint")
    assert "2 keys of another shape (4.weight [16, 32] in the checkpoint, [10, 32] here, 4.bias" in lines[2]


def test_init_from_log_summary_is_at_most_one_line_per_kind(tmp_path, caplog):
    from store.init_from import log_summary

    result = {
        "path": "x.pt",
        "loaded": 3,
        "missing": [f"m{i}" for i in range(12)],
        "unexpected": [f"u{i}" for i in range(7)],
        "skipped": [(f"s{i}", (2,), (3,)) for i in range(6)],
    }
    with caplog.at_level(logging.INFO, logger="test.init"):
        log_summary(result, logging.getLogger("test.init"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert "12 missing keys (m0, m1, m2, m3, m4 and 7 more)" in lines[1]
    assert "7 unexpected keys (u0, u1, u2, u3, u4 and 2 more)" in lines[2]
    assert (
        "6 keys of another shape (s0 [2] in the checkpoint, [3] here" in lines[3] and "and 1 more" in lines[3]
    )


@USES_MLP
@needs("conf/model/simple_cnn.yaml")
def test_init_from_what_is_no_checkpoint_or_of_another_model(tmp_path):
    from models.simple_cnn import SimpleCNN
    from store.init_from import load_initial_weights

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for path in (text, foreign):
        with pytest.raises(CheckpointError) as err:
            load_initial_weights(mlp(), path, strict=False)
        assert str(path) in str(err.value) and "\n" not in str(err.value)

    path = checkpoint_of(mlp(), tmp_path / "mlp.pt")
    cnn = SimpleCNN(in_channels=1, num_classes=10)
    with pytest.raises(CheckpointError, match="none of the 6 tensors"):
        load_initial_weights(cnn, path, strict=False)


def two_parts(body: str, seed: int) -> torch.nn.Module:
    """A model of a body named `body` and a head: a contrastive encoder's names, or a classifier's."""
    torch.manual_seed(seed)
    return torch.nn.ModuleDict({body: torch.nn.Linear(4, 3), "head": torch.nn.Linear(3, 2)})


def test_init_from_map_renames_the_checkpoint_keys_by_prefix_and_says_so(tmp_path, caplog):
    from store.init_from import load_initial_weights, log_summary

    source = two_parts("encoder", seed=1)
    path = checkpoint_of(source, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match="missing"):  # by name alone, nothing of the body fits
        load_initial_weights(two_parts("features", seed=2), path, strict=True)
    target = two_parts("features", seed=2)
    result = load_initial_weights(target, path, strict=True, prefixes={"encoder.": "features."})
    assert result["loaded"] == 4 and result["renamed"] == [("encoder.", "features.", 2)]
    assert torch.equal(target["features"].weight, source["encoder"].weight)
    with caplog.at_level(logging.INFO, logger="test.init"):
        log_summary(result, logging.getLogger("test.init"))
    assert [r.getMessage() for r in caplog.records] == [
        f"init_from: loaded 4 of this model's 4 tensors from {path} (renamed: 2 encoder.* as features.*)"
    ]
    # A prefix that renames nothing, on either side, is one line, not a silently fresh body.
    for prefixes, message in (
        ({"backbone.": "features."}, "no key of .* starts with 'backbone.'"),
        ({"encoder.": "trunk."}, "no key of this model starts with 'trunk.'"),
    ):
        with pytest.raises(CheckpointError, match=message) as err:
            load_initial_weights(two_parts("features", seed=2), path, strict=False, prefixes=prefixes)
        assert "\n" not in str(err.value)


class LazyMLP(torch.nn.Sequential):
    """Lazy modules: their shapes come with the first batch."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__(
            torch.nn.Flatten(), torch.nn.LazyLinear(32), torch.nn.ReLU(), torch.nn.LazyLinear(num_outputs)
        )


def test_init_from_a_lazy_model_wants_its_shapes_first(tmp_path):
    from store.init_from import load_initial_weights

    source = LazyMLP(10)
    source(torch.zeros(2, 1, 8, 8))
    path = checkpoint_of(source, tmp_path / "lazy.pt")
    with pytest.raises(ValueError, match="run one batch"):
        load_initial_weights(LazyMLP(3), path, strict=False)
    target = LazyMLP(3)
    target(torch.zeros(2, 1, 8, 8))
    result = load_initial_weights(target, path, strict=False)
    assert result["loaded"] == 2 and [k for k, *_ in result["skipped"]] == ["3.weight", "3.bias"]


# --- profiler ---------------------------------------------------------------------------------------------


def train_steps(profiler, steps: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = model(torch.randn(16, 8)).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        profiler.step()


def test_profiler_writes_a_trace_and_logs_the_top_operators(tmp_path, caplog, one_thread):
    from loop.profiling import StepProfiler, build_profiler

    with caplog.at_level(logging.INFO, logger="test.profile"):
        profiler = build_profiler(3, tmp_path, "cpu", log=logging.getLogger("test.profile"))
        assert isinstance(profiler, StepProfiler)
        train_steps(profiler, 8)  # 1 wait + 1 warm-up + 3 recorded, then it stops by itself
    assert profiler.done
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::addmm" in names and "ProfilerStep#2" in names and "ProfilerStep#5" not in names
    assert "aten::addmm" in (tmp_path / "profile" / "operators.txt").read_text()
    logged = [r.getMessage() for r in caplog.records]
    assert logged == profiler.finish()  # finish() after the fact returns the same lines, logs nothing new
    assert logged[0].startswith("profile: trace of 3 steps in ")
    assert logged[1].startswith("profile: top 10 operators by self CPU time")
    rows = logged[2:]
    assert len(rows) == 10 and any("aten::addmm" in r for r in rows)
    assert not any("ProfilerStep" in r for r in rows)
    assert all(r.split()[-1] == "calls" for r in rows)


def test_profiler_stopped_early_writes_what_it_recorded(tmp_path, caplog, one_thread):
    from loop.profiling import build_profiler

    log = logging.getLogger("test.profile")
    profiler = build_profiler(5, tmp_path / "a", "cpu", log=log)
    train_steps(profiler, 3)  # the run ends after 1 recorded step
    lines = profiler.finish()
    assert lines[0].startswith("profile: trace of 1 steps") and (tmp_path / "a/profile/trace.json").is_file()

    with caplog.at_level(logging.INFO, logger="test.profile"):
        profiler = build_profiler(5, tmp_path / "b", "cpu", log=log)
        train_steps(profiler, 1)  # still waiting: nothing recorded
        assert profiler.finish() == []
    assert "before the profiler recorded any" in caplog.records[-1].getMessage()
    assert not (tmp_path / "b" / "profile" / "trace.json").exists()


def test_profiler_off_is_a_no_op():
    from loop.profiling import NoProfiler, build_profiler

    for steps in (None, 0):
        profiler = build_profiler(steps, "/nonexistent", "cpu")
        assert isinstance(profiler, NoProfiler) and not profiler.enabled
        profiler.step()
        assert profiler.finish() == []


def test_top_operators_with_cuda_times_adds_a_second_table():
    from loop.profiling import top_operators

    class Event:
        def __init__(self, key, cpu, cuda, count=1):
            self.key, self.self_cpu_time_total, self.self_device_time_total, self.count = (
                key,
                cpu,
                cuda,
                count,
            )

    events = [Event("ProfilerStep*", 900, 0), Event("aten::mm", 100, 5000), Event("aten::add", 300, 10)]
    lines = top_operators(events, with_cuda=True)
    assert lines[0].startswith("profile: top 10 operators by self CPU time (of 0.40 ms in all)")
    assert "aten::add" in lines[1] and "aten::mm" in lines[2]
    assert lines[3].startswith("profile: top 10 operators by self CUDA time (of 5.01 ms in all)")
    assert "aten::mm" in lines[4] and "99.8%" in lines[4]


# --- debug=overfit and the debug configs ------------------------------------------------------------------


class Augmented(Dataset):
    """A dataset that reads its samples through `transform`, as torchvision's do."""

    def __init__(self, n: int, transform) -> None:
        self.data = torch.arange(n, dtype=torch.float32).view(n, 1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(self.data[i]), int(i) % 2


def test_overfit_splits_of_in_memory_data(tmp_path):
    from data.splits import Splits
    from setup.overfit import overfit_splits

    x, y = torch.randn(50, 3), torch.arange(50)
    splits = Splits(TensorDataset(x[:30], y[:30]), TensorDataset(x[30:40], y[30:40]), TensorDataset(x[40:]))
    small, note = overfit_splits(splits, 8)
    assert isinstance(small.train, TensorDataset) and small.val is small.train and small.test is splits.test
    assert torch.equal(small.train.tensors[0], x[:8]) and torch.equal(small.train.tensors[1], y[:8])
    assert "first 8 training samples" in note and "no augmentation" in note
    assert len(overfit_splits(splits, 1000)[0].train) == 30
    with pytest.raises(ValueError):
        overfit_splits(splits, 0)


def test_overfit_splits_see_training_samples_through_the_validation_transform():
    from data.splits import Splits
    from setup.overfit import overfit_splits

    def augment(x):
        return x + 1000 * torch.rand(1)  # random: never the same twice

    def plain(x):
        return x

    train_full, val_full = Augmented(20, augment), Augmented(20, plain)
    order = [7, 3, 11, 0, 5, 9]
    splits = Splits(Subset(Subset(train_full, list(range(20))), order), Subset(val_full, [1, 2]), val_full)
    small, note = overfit_splits(splits, 4)
    assert [small.train[i][0].item() for i in range(4)] == [7.0, 3.0, 11.0, 0.0]  # same samples, no noise
    assert small.val is small.train and "through the validation transform" in note
    assert train_full.transform is augment  # the original dataset is untouched
    assert splits.train[0][0].item() > 7.0

    # No validation transform of the same kind of dataset: the training one stays, and the note says so.
    other = Splits(Subset(train_full, order), TensorDataset(torch.zeros(2, 1)), val_full)
    small, note = overfit_splits(other, 2)
    assert "training split's own transform" in note and len(small.train) == 2


def test_same_batches_every_epoch():
    from data.splits import Splits
    from setup.loaders import build_dataloaders
    from setup.overfit import overfit_splits, same_batches_every_epoch

    data = Augmented(40, lambda x: x)
    for splits in (
        Splits(TensorDataset(torch.arange(40.0).view(40, 1)), TensorDataset(torch.zeros(4, 1)), data),
        Splits(Subset(data, list(range(40))), Subset(data, [0, 1]), data),
    ):
        small, _ = overfit_splits(splits, 16)
        loaders = build_dataloaders(small, batch_size=4, num_workers=0, seed=3, pin_memory=False)
        same_batches_every_epoch(loaders.train)
        epochs = []
        for epoch in (0, 1, 5):
            loaders.train.set_epoch(epoch)
            epochs.append([b[0].flatten().tolist() for b in loaders.train])
        assert epochs[0] == epochs[1] == epochs[2] and len(epochs[0]) == 4
        assert sorted(v for batch in epochs[0] for v in batch) == [float(i) for i in range(16)]
    with pytest.raises(TypeError):
        same_batches_every_epoch([1, 2, 3])


def test_debug_configs_set_the_training_control_keys(tmp_path):
    expected = {
        "overfit": {"trainer.overfit_batches": 4, "trainer.max_steps": None},
        "profile": {"trainer.profile_steps": 5, "trainer.max_epochs": 1, "trainer.limit_batches": 10},
        "anomaly": {"trainer.detect_anomaly": True},
    }
    from omegaconf import OmegaConf

    for mode, values in expected.items():
        cfg = compose_config([f"debug={mode}"], tmp_path / mode)
        assert cfg.name == mode
        for key, value in values.items():
            assert OmegaConf.select(cfg, key) == value, (mode, key)
    # The profiler's wait and warm-up steps and its active ones fit in the run.
    cfg = compose_config(["debug=profile"], tmp_path / "p")
    assert 1 + 1 + cfg.trainer.profile_steps <= cfg.trainer.limit_batches
