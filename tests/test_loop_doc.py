"""docs/loop.md's worked example of a second optimizer: its patch applies to this checkout, trains, and a
run stopped and resumed ends equal to one never stopped, the critic and its optimizer included."""

import re
import shutil
import signal
import subprocess

import pytest
import torch

from tests.helpers import FAST, PYTHON, REFERENCE_RUN, REPO, kill9_once_written

pytestmark = [REFERENCE_RUN, pytest.mark.needs("docs/loop.md")]
KEEP_OUT = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "multirun", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def patched_checkout(tmp_path):
    blocks = re.findall(r"^```diff\n(.*?)^```", (REPO / "docs" / "loop.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "docs/loop.md should hold one diff block"
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=KEEP_OUT)
    (copy / "critic.diff").write_text(blocks[0])
    applied = subprocess.run(["git", "apply", "critic.diff"], cwd=copy, capture_output=True, text=True)
    assert applied.returncode == 0, f"docs/loop.md's patch no longer applies: {applied.stderr}"
    return copy


def train(copy, *args):
    done = subprocess.run([PYTHON, "train.py", *args], cwd=copy,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_the_second_optimizer_of_docs_loop_md_trains_and_resumes_exactly(tmp_path):
    copy = patched_checkout(tmp_path)
    whole, split = tmp_path / "whole", tmp_path / "split"
    run = [*FAST, "trainer.critic_weight=0.1", "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=4"]
    train(copy, *run, f"hydra.run.dir={whole}")
    victim = subprocess.Popen([PYTHON, "train.py", *run, f"hydra.run.dir={split}"], cwd=copy,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert kill9_once_written(victim, split / "checkpoints" / "step_00000004.pt") == -signal.SIGKILL
    train(copy, f"resume={split}")

    a, b = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (whole, split))
    assert a["step"] == b["step"] == 6
    for key in ("model", "critic"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    moments = [s["exp_avg"] for s in a["critic_optimizer"]["state"].values()]
    assert moments and all(m.abs().sum() > 0 for m in moments), "the critic's optimizer never stepped"
    pairs = zip(a["critic_optimizer"]["state"].values(), b["critic_optimizer"]["state"].values(), strict=True)
    assert all(torch.equal(x["exp_avg"], y["exp_avg"]) for x, y in pairs)
