"""trainer.ema_decay: a moving average of the weights, evaluated, kept in best.pt (kill -9 and resume
bit-identical, eval.py on best.pt: tests/test_resume.py's matrix), under torchrun and torch.compile."""

import pytest
import torch

from store.checkpoint import load_checkpoint, read_checkpoint
from tests.helpers import REFERENCE_RUN, read_metrics, run_cli

pytestmark = REFERENCE_RUN


def averaged(whole, killed) -> None:
    """tests/test_resume.py's kill -9 matrix (trainer.ema_decay case) checks the average is saved, resumed
    and evaluated exactly; here, that it is an average: one per step, not the weights themselves."""
    saved = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert int(saved["ema"]["n_averaged"]) == saved["step"] == read_metrics(whole)["steps"]
    evaluated = read_checkpoint(whole / "checkpoints" / "last.pt").evaluated_weights
    assert evaluated.keys() == saved["model"].keys()
    assert any(not torch.equal(evaluated[k], saved["model"][k]) for k in evaluated)


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
