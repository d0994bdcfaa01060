"""eval.py: a checkpoint evaluated on the test split, metrics.json beside it, scalars in the run's
TensorBoard; bad checkpoints and data that does not fit fail in one line."""

import json
import os
import shutil
import signal
import subprocess

import pytest
import torch

from tests.helpers import (
    FAST,
    PYTHON,
    REPO,
    event_accumulator,
    options,
    read_metrics,
    train_in_process,
    wait_for_moment,
)


def run_eval(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [PYTHON, str(REPO / "eval.py"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train_in_process([*FAST, "trainer.limit_batches=6"], run)
    return run


def test_eval_reproduces_the_runs_test_metrics_and_logs_them(trained):
    best = trained / "checkpoints" / "best.pt"
    proc = run_eval([f"ckpt={best}", "data=digits"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((best.parent / "metrics.json").read_text())
    # train.py tested the same best.pt on the same split: the numbers must agree exactly.
    assert metrics["test/acc"] == read_metrics(trained)["test/acc"]
    assert metrics["test/loss"] == pytest.approx(read_metrics(trained)["test/loss"], rel=1e-6)
    assert (metrics["checkpoint"], metrics["data"], metrics["test/count"]) == ("best.pt", "digits", 270)
    events = event_accumulator(trained).Scalars("eval/digits/acc")
    assert [(e.step, round(e.value, 6)) for e in events] == [(metrics["step"], round(metrics["test/acc"], 6))]
    assert not (trained / ".hydra" / "hydra.yaml").exists() and not list(
        REPO.glob("eval*.log")
    )  # nothing else


@pytest.mark.slow
def test_eval_errors_are_one_line(trained, tmp_path):
    best = trained / "checkpoints" / "best.pt"
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload(marker)}, evil)
    cases = {
        f"ckpt={tmp_path / 'missing.pt'}": "does not exist",
        f"ckpt={evil}": "refused unread",
    }
    if "fake" in options("data"):  # colour images, for a model trained on grey digits
        cases[f"ckpt={best} data=fake"] = (
            "data=fake has in_channels=3, but the checkpoint's model was trained with"
        )
    for args, expected in cases.items():
        proc = run_eval(args.split())
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert expected in out and len(out.strip().splitlines()) == 1 and "Traceback" not in out
    assert not marker.exists()


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("moment", ["handlers installed", "hydra starting", "torch importing"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_any_moment_of_eval_is_one_line(trained, tmp_path, signum, moment):
    """eval.py imports train.py: its start-up handlers must stay eval.py's, and nothing of torch's may follow
    the stop line. Each moment is a state of the process, waited for: never a time after its start."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)  # eval writes beside the checkpoint and into the run's TensorBoard
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "eval.py"), f"ckpt={run / 'checkpoints' / 'best.pt'}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        seen = wait_for_moment(proc, moment)
    except AssertionError:
        proc.kill()
        raise
    proc.send_signal(signum)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith(f"eval.py: stopped by {signum.name}"), out
