"""FSDP (trainer.strategy=fsdp): two CPU ranks (gloo) train as two DDP ranks and as one process on the same
global batch; sharded checkpoints survive kill -9 and resume bit-identically, or on one rank with the same
losses; activation checkpointing changes no loss; SIGTERM stops every rank at one step; two "nodes" train
as one machine's two ranks. torchrun costs ~15 s a launch here: the runs are shared by module fixtures."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from setup.distributed import weights_digest
from store.checkpoint import CheckpointError, read_checkpoint
from tests.helpers import (
    FAST,
    PYTHON,
    REFERENCE_RUN,
    REPO,
    kill9_once_written,
    needs,
    train_in_process,
    wait_for_line,
)
from tests.test_ddp import DIGEST, losses, run_dirs
from tests.test_signals import SENDERS, assert_every_rank_stopped, process_tree, send

pytestmark = pytest.mark.slow

# No dropout, a loss logged every step: runs of the same global batch compute the same thing, for the issue's
# 20 steps.
STEPS = 20
SAME_MATH = ["trainer.max_epochs=1", f"trainer.limit_batches={STEPS}", "logging.progress_bar=false", "model.dropout=0",
             "logging.every_n_steps=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]  # fmt: skip
# The models the issue names, each with the data it trains on: the MLP names no shard_blocks() (sharded as
# one unit), the CNN its conv blocks, the GPT its transformer blocks (with activation checkpointing on).
IMAGE_MODELS = ("mlp", "simple_cnn")
# Gradient accumulation too: FSDP's reduce-scatter waits for the last micro-batch.
GPT = [
    "experiment=pytext_gpt",
    f"trainer.max_steps={STEPS}",
    "data.block_size=32",
    "trainer.accumulate_grad_batches=2",
]
# The parts the shared runs train (a generated project may lack some: their tests are skipped there).
PARTS = needs(
    "conf/data/digits.yaml",
    "conf/model/mlp.yaml",
    "conf/model/simple_cnn.yaml",
    "conf/experiment/pytext_gpt.yaml",
)
KILL_RUN = ["trainer.max_epochs=2", "trainer.limit_batches=8", "data.batch_size=8", "trainer.limit_val_batches=2",
            "trainer.checkpoint_every_n_steps=3", "trainer.keep_step_checkpoints=1", "model.dropout=0",
            "logging.every_n_steps=1", "logging.progress_bar=false", "trainer.strategy=fsdp"]  # fmt: skip


def env() -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTEST_ADDOPTS")}
    return {**clean, "PYTHONUNBUFFERED": "1"}


def torchrun(args: list[str], *launcher: str, **popen) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 train.py ARGS` (or the launcher options given)."""
    launcher = launcher or ("--standalone", "--nproc_per_node=2")
    cmd = [PYTHON, "-m", "torch.distributed.run", *launcher, str(REPO / "train.py"), *args]
    popen = {"stdout": subprocess.PIPE, **popen}
    return subprocess.Popen(cmd, cwd=REPO, env=env(), text=True, stderr=subprocess.STDOUT, **popen)


def finished(proc: subprocess.Popen, timeout: int = 400) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-4000:]
    return out


def job_runs(root: Path) -> dict[str, Path]:
    """A multirun's job directories by their strategy and model (read from each job's overrides)."""
    found = {}
    for job in (root / "multirun.yaml").parent.iterdir() if (root / "multirun.yaml").exists() else []:
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.exists():
            text = overrides.read_text()
            strategy = re.search(r"trainer\.strategy=(\w+)", text)[1]
            model = (re.search(r"model=(\w+)", text) or [None, "gpt"])[1]
            found[f"{strategy}-{model}"] = job
    return found


def multirun(args: list[str], root: Path) -> dict[str, Path]:
    finished(torchrun(["-m", *args, f"paths.multirun_root={root}", f"paths.output_root={root}"]))
    [sweep] = [d for day in root.iterdir() if not day.name.startswith(".") for d in day.iterdir()]
    return job_runs(sweep)


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict[str, Path]:
    """DDP and FSDP at 2 ranks x 16, one process x 32: every model, each strategy, in two torchrun launches
    (a Hydra multirun keeps its process group across jobs)."""
    tmp = tmp_path_factory.mktemp("parity")
    runs = multirun([*SAME_MATH, "data.batch_size=16", "trainer.strategy=ddp,fsdp",
                     f"model={','.join(IMAGE_MODELS)}"], tmp / "images")  # fmt: skip
    runs |= multirun([*SAME_MATH, *GPT, "data.batch_size=4", "trainer.strategy=ddp,fsdp",
                      "trainer.activation_checkpointing=true"], tmp / "gpt")  # fmt: skip
    for model in IMAGE_MODELS:
        train_in_process([*SAME_MATH, "data.batch_size=32", f"model={model}"], tmp / f"single-{model}")
        runs[f"single-{model}"] = tmp / f"single-{model}"
    train_in_process([*SAME_MATH, *GPT, "data.batch_size=8"], tmp / "single-gpt")
    runs["single-gpt"] = tmp / "single-gpt"
    return runs


@PARTS
@pytest.mark.parametrize("model", [*IMAGE_MODELS, "gpt"])
def test_fsdp_trains_as_ddp_and_as_one_process(parity, model):
    fsdp, ddp, single = (dict(losses(parity[f"{kind}-{model}"])) for kind in ("fsdp", "ddp", "single"))
    assert list(fsdp) == list(ddp) == list(single) == list(range(1, STEPS + 1))
    fsdp, ddp, single = (list(x.values()) for x in (fsdp, ddp, single))
    assert fsdp == pytest.approx(ddp, abs=1e-5)
    last = read_checkpoint(parity[f"fsdp-{model}"] / "checkpoints" / "last.dcp")
    # BatchNorm normalizes by each rank's own 16 samples (no SyncBatchNorm), one process by its 32.
    if not any("running_mean" in k for k in last.model_weights):
        assert fsdp == pytest.approx(single, abs=1e-5)
    # Both ranks logged the digest of the whole weights, gathered: equal, and equal to last.dcp's, read on
    # this one process (consolidated: no process group here).
    run = parity[f"fsdp-{model}"]
    found = dict(DIGEST.findall((run / "train.log").read_text() + (run / "train.rank1.log").read_text()))
    params = {k for k in last.model_weights if "running_" not in k and "num_batches" not in k}
    assert (
        found["0"]
        == found["1"]
        == weights_digest((k, v) for k, v in last.model_weights.items() if k in params)
    )
    assert last.sharded and not (run / "checkpoints" / "last.pt").exists()


@needs("conf/data/digits.yaml", "conf/model/mlp.yaml", "conf/optimizer/sgd.yaml", "conf/scheduler/none.yaml")
def test_gradient_clipping_takes_the_norm_over_every_shard(tmp_path):
    """clip_grad_norm_ on FSDP's DTensor gradients clips by the norm of the whole gradient, as under DDP: a
    norm per shard would scale each rank's shard by a factor of its own. SGD at a constant rate (AdamW undoes
    a gradient's scale), clipped far below the gradient's norm."""
    clipped = [*SAME_MATH, "model=mlp", "optimizer=sgd", "scheduler=none", "trainer.grad_clip=0.05"]
    runs = multirun([*clipped, "data.batch_size=16", "trainer.strategy=ddp,fsdp"], tmp_path / "clipped")
    fsdp, ddp = (list(dict(losses(runs[f"{kind}-mlp"])).values()) for kind in ("fsdp", "ddp"))
    assert len(fsdp) == STEPS and fsdp == pytest.approx(ddp, abs=1e-5)
    # The clip did act: one process on the same global batch, unclipped, ends elsewhere.
    unclipped = [*clipped[:-1], "data.batch_size=32"]
    train_in_process(unclipped, tmp_path / "unclipped")
    free = list(dict(losses(tmp_path / "unclipped")).values())
    assert abs(free[-1] - ddp[-1]) > 1e-3, (free, ddp)


@needs("conf/experiment/pytext_gpt.yaml")
def test_activation_checkpointing_changes_no_loss(tmp_path):
    gpt = [
        *SAME_MATH,
        "experiment=pytext_gpt",
        "trainer.max_steps=2",
        "data.block_size=32",
        "data.batch_size=4",
    ]
    train_in_process(gpt, tmp_path / "off")
    train_in_process([*gpt, "trainer.activation_checkpointing=true"], tmp_path / "on")
    assert losses(tmp_path / "on") == losses(tmp_path / "off")


def saved_for_backward(model, tokens) -> tuple[int, list]:
    """The bytes autograd keeps for backward in one forward (what activation checkpointing saves), and the
    gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens).float().square().mean()
    loss.backward()
    return sum(saved), [p.grad.clone() for p in model.parameters()]


@needs("conf/experiment/pytext_gpt.yaml", "tools/bench_memory.py")
def test_activation_checkpointing_keeps_less_for_backward_and_the_same_gradients():
    import sys

    from setup.distributed import Distributed
    from setup.sharding import prepare

    sys.path.insert(0, str(REPO / "tools"))
    from bench_memory import gpt

    alone = Distributed(0, 0, 1, torch.device("cpu"))
    torch.manual_seed(0)
    off, cfg = gpt(["data.block_size=64"])
    on = copy.deepcopy(off)
    prepare(on, "ddp", True, False, "32", alone)
    tokens = torch.randint(0, cfg.model.vocab_size, (4, 64))
    kept_off, grads_off = saved_for_backward(off, tokens)
    kept_on, grads_on = saved_for_backward(on, tokens)
    assert kept_on < 0.5 * kept_off, (kept_on, kept_off)  # the blocks' insides are recomputed, not kept
    for a, b in zip(grads_on, grads_off, strict=True):
        assert torch.equal(a, b)


def signal_all(proc: subprocess.Popen, signum: int) -> None:
    """Signal torchrun and every process under it at once (its ranks run in sessions of their own), as
    SLURM signals a job step's cgroup, or as a machine is lost."""
    for pid in process_tree(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def kill_all_once(proc: subprocess.Popen, path: Path, timeout: float = 240) -> None:
    """kill -9 torchrun and its ranks together as soon as `path` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    signal_all(proc, signal.SIGKILL)
    proc.wait()


@REFERENCE_RUN
def test_kill9_then_resume_is_bit_identical_and_resumes_on_one_rank(tmp_path):
    whole, killed, on_one = tmp_path / "whole", tmp_path / "killed", tmp_path / "on_one"
    reference = torchrun([*KILL_RUN, f"hydra.run.dir={whole}"])
    # The victim keeps its step checkpoints, so that the first stays to be seen on a loaded machine.
    victim = torchrun([*KILL_RUN, "trainer.keep_step_checkpoints=null", f"hydra.run.dir={killed}"],
                      start_new_session=True, stdout=subprocess.DEVNULL)  # fmt: skip
    kill_all_once(victim, killed / "checkpoints" / "step_00000003.dcp")
    assert not (killed / "metrics.json").exists(), "the victim finished first"
    last = read_checkpoint(killed / "checkpoints" / "last.dcp")
    assert last.step >= 3 and last.batch_in_epoch > 0, "the kill was not mid-epoch"
    shutil.copytree(killed, on_one, symlinks=True)
    (on_one / ".lock").unlink(missing_ok=True)

    out = finished(torchrun([f"resume={killed}", "trainer.keep_step_checkpoints=1"]))
    assert "Resuming from" in out
    finished(reference)
    a, b = (read_checkpoint(run / "checkpoints" / "last.dcp") for run in (whole, killed))
    assert a.step == b.step and a.model_weights.keys() == b.model_weights.keys()
    for name, tensor in a.model_weights.items():
        assert torch.equal(tensor, b.model_weights[name]), name
    assert losses(killed) == losses(whole)
    # keep_step_checkpoints=1: one step_<N>.dcp, and no shard directory that no name links to.
    names = sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["best.dcp", "last.dcp", "step_00000015.dcp"], names
    shards = [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".shards-")]
    linked = {os.readlink(p) for p in (killed / "checkpoints").iterdir() if p.is_symlink()}
    assert {p.name for p in shards} == linked

    # 2 ranks -> 1: DCP reshards; 1 x 16 takes the same samples each step as 2 x 8.
    resumed = subprocess.run([PYTHON, str(REPO / "train.py"), f"resume={on_one}"], cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    got, want = dict(losses(on_one)), dict(losses(whole))
    assert got.keys() == want.keys()
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step


@REFERENCE_RUN
@pytest.mark.parametrize("sender", SENDERS)
def test_sigterm_stops_every_rank_with_one_sharded_checkpoint(tmp_path, sender):
    run = tmp_path / "run"
    args = [*KILL_RUN, "trainer.max_epochs=1000", "trainer.checkpoint_every_n_steps=null"]
    proc = torchrun([*args, f"hydra.run.dir={run}"], start_new_session=True)
    seen = wait_for_line(proc, r".*step 3/")
    send(proc, sender, signal.SIGTERM)
    out = seen + proc.communicate(timeout=240)[0]
    step = assert_every_rank_stopped(proc, out, run, sender, signal.SIGTERM)
    assert read_checkpoint(run / "checkpoints" / "last.dcp").step == step
    # Sharded only, and no shard directory that no name links to (one left half-written).
    ckpts = run / "checkpoints"
    linked = {os.readlink(p) for p in ckpts.iterdir() if p.is_symlink()}
    assert linked == {p.name for p in ckpts.iterdir() if p.name.startswith(".shards-")}
    assert not (ckpts / "last.pt").exists()
    # Resume goes on from there, for two more steps.
    resumed = torchrun([f"resume={run}", f"trainer.max_steps={step + 2}"])
    out = finished(resumed)
    assert f"(step {step})" in out and (run / "metrics.json").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@PARTS
def test_two_nodes_train_as_two_ranks_of_one(parity, tmp_path):
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            f"--rdzv-id=fsdp-{os.getpid()}"]  # fmt: skip
    args = [
        *SAME_MATH,
        "data.batch_size=16",
        "trainer.strategy=fsdp",
        "model=mlp",
        f"paths.output_root={tmp_path}",
    ]
    nodes = [torchrun(args, *rdzv, f"--node-rank={rank}") for rank in (0, 1)]
    for node in nodes:
        finished(node)
    [run] = run_dirs(tmp_path)  # one run directory for both "machines"
    assert (run / "metrics.json").is_file() and (run / "train.rank1.log").is_file()
    assert losses(run) == losses(parity["fsdp-mlp"])


@PARTS
def test_a_forged_metadata_file_is_refused_unread(parity, tmp_path):
    """DCP pickles its .metadata: one that names anything but DCP's metadata classes is not unpickled."""
    import pickle

    ckpt = tmp_path / "last.dcp"
    shutil.copytree(parity["fsdp-mlp"] / "checkpoints" / "last.dcp", ckpt)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    (ckpt / ".metadata").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="other than DCP's metadata"):
        _ = read_checkpoint(ckpt).model_weights
    assert not (tmp_path / "ran").exists()


@needs("tools/bench_memory.py", "conf/experiment/pytext_gpt.yaml")
def test_fsdp_halves_each_ranks_optimizer_state_at_two_ranks():
    done = subprocess.run([PYTHON, str(REPO / "tools" / "bench_memory.py"), "--ranks", "2", "--no-write", "--json"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [two] = json.loads(done.stdout.strip().splitlines()[-1])
    assert two["ranks"] == 2
    assert two["fsdp"]["optimizer"] <= 0.55 * two["ddp"]["optimizer"], two
    assert two["fsdp"]["params"] <= 0.55 * two["ddp"]["params"], two


@PARTS
def test_a_sharded_run_evaluates_loads_and_consolidates_on_one_process(parity, tmp_path):
    from store.consolidate import main
    from store.init_from import load_initial_weights
    from store.trained import load_trained

    run = parity["fsdp-gpt"]
    out = tmp_path / "gpt.pt"
    assert main([str(run), str(out)]) == 0
    sharded, single = load_trained(run), load_trained(out)
    assert sharded.path.name == "best.dcp" and sharded.step == single.step == STEPS
    for (name, a), (_, b) in zip(
        sharded.model.state_dict().items(), single.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # init_from= a sharded run: its weights, consolidated, into a new model.
    fresh = copy.deepcopy(single.model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_initial_weights(fresh, run, strict=True)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), single.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert main([str(tmp_path)]) == 2  # no sharded checkpoint there: one line, exit 2
    done = subprocess.run([PYTHON, str(REPO / "eval.py"), f"ckpt={run}"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "best.dcp on pytext test" in done.stdout + done.stderr


@REFERENCE_RUN
def test_a_one_process_run_resumes_on_two_ranks(tmp_path):
    """1 -> 2 ranks: the file's whole weights and optimizer state, sharded by each rank as it loads them;
    2 x 8 take the samples 1 x 16 took."""
    args = [a for a in KILL_RUN if not a.startswith("data.batch_size=")] + ["data.batch_size=16"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    victim = subprocess.Popen([PYTHON, str(REPO / "train.py"), *args, f"hydra.run.dir={killed}"], cwd=REPO,
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    train_in_process(args, whole)
    assert kill9_once_written(victim, killed / "checkpoints" / "step_00000003.pt") == -signal.SIGKILL
    out = finished(torchrun([f"resume={killed}"]))
    assert "Resuming 1 ranks' run on 2: data.batch_size 16 -> 8" in out
    got, want = dict(losses(killed)), dict(losses(whole))
    assert got.keys() == want.keys()
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step


@REFERENCE_RUN
def test_a_run_that_does_not_shard_does_not_import_sharded_checkpoints(tmp_path):
    """torch.distributed.checkpoint takes a good part of a second of start-up to import: a run and a test of
    its best.pt that shard nothing do not import it. (FSDP itself is imported by torch's optimizer.)"""
    run = tmp_path / "run"
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['train.py', *{FAST + [f'hydra.run.dir={run}']!r}]\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('DCP imported:', 'torch.distributed.checkpoint' in sys.modules)\n"
    )
    proc = subprocess.run([PYTHON, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (run / "metrics.json").exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "DCP imported: False" in proc.stdout, proc.stdout[-2000:]
