"""Untrusted inputs: a checkpoint's config is data, never code; a checkpoint belongs to its run; every
value is checked before a directory is made; signals at any moment end in one line; a full disk loses
nothing. Each case is a real run of train.py or eval.py (kill -9 and resume, DataLoader workers
included: tests/test_resume.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from system.lock import RunLock
from tests.helpers import (
    FAST,
    PYTHON,
    REPO,
    needs,
    read_metrics,
    run_cli,
    train_in_process,
)


def error_lines(proc) -> list[str]:
    """train.py tags its error line [ERROR]; eval.py prints the message alone (its only output)."""
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return [line for line in lines if "[ERROR]" in line] or (lines if len(lines) == 1 else [])


def assert_one_line(proc, needle: str, code: int = 2) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    errors = error_lines(proc)
    assert len(errors) == 1 and needle in errors[0], out
    return errors[0]


def run_eval(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([PYTHON, str(REPO / "eval.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("untrusted") / "run"
    train_in_process(FAST, run)
    return run


# --- 1. A stored config is data, never code ------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["torch.load", "pathlib.Path.write_text", "models.resnet.torch.load", "builtins.exec"],
)
def test_a_crafted_checkpoint_runs_no_code(trained, tmp_path, target):
    marker = tmp_path / "pwned.txt"
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    state["config"]["model"] = {
        "_target_": target,
        "f": str(tmp_path / "x.pt"),
        "weights_only": False,
        "map_location": {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "pwned"},
    }
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    line = assert_one_line(run_eval([f"ckpt={evil}"]), "stored config refused")
    assert "model._target_" in line and target in line
    assert not marker.exists()


SECRET = "topsecret123"


def crafted(key: str, value: str, made: Path) -> object:
    """A stored value that would read the secret (oc.env) or make a directory (run_dir) if ever resolved."""
    return value.replace("SECRET", "oc.env:SECRETX").replace("MAKE", f"run_dir:{made},x")


INTERPOLATIONS = [
    ("task.monitor", "${SECRET}"),  # eval printed: task.monitor='topsecret123' is not one of ...
    ("name", "${MAKE}"),
    ("task.monitor", "\\${SECRET}"),  # escaped once: the old escape made it \\${...}, live again
    ("task.monitor", "\\\\${SECRET}"),
    ("task.monitor", "acc${SECRET}"),
    ("tags", ["${SECRET}"]),
    ("model.hidden_dims", ["${MAKE}"]),
]


def put(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


@pytest.mark.parametrize(("key", "value"), INTERPOLATIONS)
def test_a_stored_interpolation_is_never_resolved_by_eval(trained, tmp_path, key, value):
    """Not by eval.py's own code, nor by build() turning nodes into containers and back: the checkpoint is
    refused in one line, before anything reads its values."""
    made = tmp_path / "made_by_resolver"
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    value = [crafted(key, v, made) for v in value] if isinstance(value, list) else crafted(key, value, made)
    put(state["config"], key, value)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(state, ckpt)
    proc = run_eval([f"ckpt={ckpt}"], env={"SECRETX": SECRET})
    assert SECRET not in proc.stdout + proc.stderr
    line = assert_one_line(proc, "holds an interpolation")
    assert f": {key}" in line and not made.exists()


@pytest.mark.slow
def test_a_stored_interpolation_is_never_resolved_by_resume(tmp_path):
    """The run's own .hydra/config.yaml crafted to agree with the checkpoint: an oc.select default that
    YAML decodes to `${oc.env:...}`. Neither file gets the secret read, nor a directory made."""
    run, made = tmp_path / "run", tmp_path / "made_by_resolver"
    train_in_process(FAST, run)
    own = run / ".hydra" / "config.yaml"
    lines = own.read_text().splitlines()
    hidden = {"  monitor:": "oc.env:SECRETX", "name:": f"run_dir:{made},x"}  # "\x24\x7b": "${" to YAML
    for i, line in enumerate(lines):
        for start, call in hidden.items():
            if line.startswith(start):
                lines[i] = f'{start} ${{oc.select:nope,"\\x24\\x7b{call}\\x7d"}}'
    own.write_text("\n".join(lines) + "\n")
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        state["config"]["task"]["monitor"] = "${oc.env:SECRETX}"
        state["config"]["name"] = f"${{run_dir:{made},x}}"
        torch.save(state, run / "checkpoints" / name)
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"], env={"SECRETX": SECRET})
    assert SECRET not in proc.stdout + proc.stderr
    assert_one_line(proc, "holds an interpolation")
    assert not made.exists()


def test_the_own_runs_config_check_resolves_nothing():
    """store/resume.py reads .hydra/config.yaml without resolvers: an oc.select default that YAML decodes
    to `${...}` is a resolver call too."""
    from setup.config import ConfigError
    from store.resume import _plain_resolved

    tree = {"a": 1, "b": "${oc.select:a,0}", "c": '${oc.select:nope,"\\x24\\x7boc.env:SECRETX\\x7d"}'}
    with pytest.raises(ConfigError, match="calls a resolver"):
        _plain_resolved(tree)
    assert _plain_resolved({k: v for k, v in tree.items() if k != "c"}) == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    "text",
    ["${oc.env:SECRETX}", "\\${oc.env:SECRETX}", "\\\\${oc.env:SECRETX}", "a\\", "$", "${", "\\${a:${b}}"],
)
def test_literal_values_stay_values_through_every_round_trip(text, monkeypatch):
    """What train.py's build() does to a node (to_container(resolve=True), then a new config) keeps each
    string as it was, however often it is done."""
    from omegaconf import OmegaConf

    from setup.trust import literal

    monkeypatch.setenv("SECRETX", SECRET)
    node = OmegaConf.create(literal({"v": text, "w": [text]}))
    for _ in range(3):
        node = OmegaConf.create(literal(OmegaConf.to_container(node, resolve=True)))
        assert (node.v, node.w[0]) == (text, text)


def test_allowed_targets_extends_the_allowlist(trained, tmp_path):
    """A project's own trusted code, named in its own config (never in the stored one)."""
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    state["config"]["model"]["_target_"] = "tests.lazy_model.LazyMLP"
    state["config"]["model"]["hidden_dims"] = [256, 128]
    ckpt = tmp_path / "ckpt.pt"
    torch.save(state, ckpt)
    assert_one_line(run_eval([f"ckpt={ckpt}"]), "tests.lazy_model.LazyMLP")
    proc = run_eval([f"ckpt={ckpt}", "allowed_targets=[tests.lazy_model]"])
    # Allowed, built, and then its weights do not fit: refused for that reason, not the target.
    assert_one_line(proc, "does not fit this LazyMLP")


# --- 2. A checkpoint belongs to its run; one process per run --------------------------------------------


@pytest.mark.slow
@needs("conf/model/simple_cnn.yaml")
def test_another_runs_checkpoint_is_refused_and_the_curves_stay(trained, tmp_path):
    other = tmp_path / "other"
    train_in_process([*FAST, "model=simple_cnn"], other)
    victim = tmp_path / "victim"
    proc = run_cli([*FAST, f"hydra.run.dir={victim}"])
    assert proc.returncode == 0
    events_before = {p.name: p.stat().st_size for p in (victim / "tb").iterdir()}
    (victim / "checkpoints" / "last.pt").write_bytes((other / "checkpoints" / "last.pt").read_bytes())
    line = assert_one_line(run_cli([f"resume={victim}", "trainer.max_epochs=2"]), "belongs to another run")
    assert "model" in line
    assert {p.name: p.stat().st_size for p in (victim / "tb").iterdir()} == events_before  # no purge event


@pytest.mark.slow
def test_a_run_in_use_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    assert run_cli([*FAST, f"hydra.run.dir={run}"]).returncode == 0
    assert not (run / ".lock").exists()  # released at the end
    with RunLock(run):  # this live test process holds it
        assert_one_line(
            run_cli([f"resume={run}", "trainer.max_epochs=2"]), f"in use by process {os.getpid()}"
        )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid} {os.uname().nodename}\n")  # left by a run killed -9: no lock held
    proc = run_cli([f"resume={run}", "trainer.max_epochs=2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_metrics(run)["epochs"] == 2 and not (run / ".lock").exists()


# --- 4 and 6. Every value checked before any directory is made: tests/test_cli.py, its table of bad values


# --- 5. Signals at every moment: tests/test_signals.py ------------------------------------------------


# --- 7. Crashes that must be one line: a full disk, lazy modules, a fixed-length schedule ------------------


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 KiB fail (EFBIG), as a full disk makes them fail with ENOSPC."""
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(10)}}, path)
    before = path.read_bytes()
    code = f"""
import resource, signal, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
from store.checkpoint import CheckpointError, save_checkpoint
try:
    save_checkpoint({{"model": {{"w": torch.zeros(1_000_000)}}}}, {str(path)!r})
except CheckpointError as err:
    print("ERROR", err)
"""
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("ERROR no space left to write last.pt in " + str(tmp_path)), (
        proc.stdout + proc.stderr
    )
    assert "MiB free" in proc.stdout and "the previous one is intact" in proc.stdout
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left
    with pytest.raises(CheckpointError):
        raise CheckpointError("the class is importable")


def test_a_model_with_lazy_modules_trains_with_its_graph(tmp_path):
    run = tmp_path / "run"
    train_in_process([*FAST, "model._target_=tests.lazy_model.LazyMLP", "logging.graph=true"], run)
    assert read_metrics(run)["steps"] == 3


@pytest.mark.slow
def test_a_fixed_length_schedule_resumed_longer_is_one_line(tmp_path):
    run = tmp_path / "run"
    onecycle = [
        "scheduler=none",
        "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR",
        "+scheduler.max_lr=0.01",
    ]
    assert run_cli([*FAST, *onecycle, f"hydra.run.dir={run}"]).returncode == 0
    assert_one_line(run_cli([f"resume={run}", "trainer.max_epochs=3"]), "OneCycleLR was built for 3 steps")
