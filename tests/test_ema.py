"""trainer.ema_decay: a moving average of the weights, evaluated, kept in best.pt, resumed bit-identically."""

import signal

import pytest
import torch

from store.checkpoint import load_checkpoint, read_checkpoint
from tests.helpers import REFERENCE_RUN, kill9_once_written, read_metrics, run_cli
from tests.test_resume import start_cli

pytestmark = REFERENCE_RUN

# Two epochs of 40 batches of 16 digits, a checkpoint every 15 steps: the kill lands mid-epoch.
EMA_RUN = [
    "trainer.ema_decay=0.9",
    "trainer.max_epochs=2",
    "trainer.limit_batches=40",
    "data.batch_size=16",
    "trainer.checkpoint_every_n_steps=15",
    "logging.every_n_steps=5",
    "logging.progress_bar=false",
]


def test_ema_off_by_default_and_its_decay_is_checked(tmp_path):
    for bad in ("1.5", "0", "-0.1", "1"):
        proc = run_cli([f"trainer.ema_decay={bad}", f"paths.output_root={tmp_path}"])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "trainer.ema_decay" in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir()), "a rejected run left a directory"


@pytest.mark.slow
def test_ema_is_evaluated_saved_and_resumed_bit_identically(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start_cli([*EMA_RUN, f"hydra.run.dir={whole}"])
    victim = start_cli([*EMA_RUN, f"hydra.run.dir={killed}"])
    assert (
        kill9_once_written(victim, killed / "checkpoints" / "step_00000015.pt", timeout=120)
        == -signal.SIGKILL
    )
    assert not (killed / "metrics.json").exists()
    resumed = run_cli([f"resume={killed}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert reference.wait(timeout=300) == 0

    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (whole, killed))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert int(a["ema"]["n_averaged"]) == a["step"] == 80
    # The average is not the weights themselves: what is evaluated differs from what is trained.
    averaged = read_checkpoint(whole / "checkpoints" / "last.pt").evaluated_weights
    assert averaged.keys() == a["model"].keys()
    assert any(not torch.equal(averaged[k], a["model"][k]) for k in averaged)
    assert read_metrics(whole) == {**read_metrics(killed), "train_seconds": read_metrics(whole)["train_seconds"],
                                   "samples_per_s": read_metrics(whole)["samples_per_s"]}  # fmt: skip

    # eval.py tests best.pt's moving average, as the run's own final test did.
    done = run_cli_eval(whole)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = read_metrics(whole / "checkpoints")
    assert tested["test/acc"] == pytest.approx(read_metrics(whole)["test/acc"], abs=1e-6)


def run_cli_eval(run):
    import subprocess

    from tests.helpers import PYTHON, REPO

    return subprocess.run([PYTHON, str(REPO / "eval.py"), f"ckpt={run / 'checkpoints' / 'best.pt'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_ema_under_torchrun_averages_what_one_process_averages(tmp_path):
    from tests.test_ddp import SAME_MATH, run_dirs, torchrun

    ddp = torchrun(
        [*SAME_MATH, "trainer.ema_decay=0.5", "data.batch_size=16", f"paths.output_root={tmp_path / 'ddp'}"]
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli(
        [*SAME_MATH, "trainer.ema_decay=0.5", "data.batch_size=32", f"paths.output_root={tmp_path / 's'}"]
    )
    assert single.returncode == 0, single.stderr[-3000:]
    (a,), (b,) = run_dirs(tmp_path / "ddp"), run_dirs(tmp_path / "s")
    ema_ddp, ema_single = (load_checkpoint(run / "checkpoints" / "last.pt")["ema"] for run in (a, b))
    assert ema_ddp.keys() == ema_single.keys()
    for key in ema_ddp:
        assert torch.allclose(ema_ddp[key].float(), ema_single[key].float(), rtol=1e-4, atol=1e-5), key


@pytest.mark.slow
def test_ema_with_torch_compile(tmp_path):
    from tests.helpers import FAST, train_in_process

    run = tmp_path / "run"
    train_in_process([*FAST, "trainer.compile=true", "trainer.ema_decay=0.9"], run)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert int(saved["ema"]["n_averaged"]) == saved["step"] == 3
    evaluated = read_checkpoint(run / "checkpoints" / "last.pt").evaluated_weights
    assert saved["model"].keys() == evaluated.keys()  # no _orig_mod. prefixes
