"""Experiment trackers beside TensorBoard (board/trackers.py): MLflow for real on a SQLite store, W&B offline,
each read back and held against the run's own TensorBoard event file; a kill -9 and a resume continue the
same tracker run with every step once; a tracker failing mid-run costs one warning; a tracker unknown or
not installed is one line before anything runs."""

from __future__ import annotations

import json
import logging
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from board.trackers import known
from system.layout import RunDir
from tests.helpers import (
    FAST,
    PYTHON,
    REFERENCE_RUN,
    REPO,
    event_accumulator,
    kill9_once_written,
    read_metrics,
    require_extra,
    run_cli,
    train_in_process,
)

pytestmark = REFERENCE_RUN
EVERY_STEP = ["logging.every_n_steps=1"]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each scalar of the event file as (step, value), one per step (log_run_end writes test/ a second time,
    at the same step, for the HPARAMS tab)."""
    acc = event_accumulator(run_dir)
    return {tag: sorted({e.step: e.value for e in acc.Scalars(tag)}.items()) for tag in acc.Tags()["scalars"]}


def assert_same_scalars(got: dict[str, list[tuple[int, float]]], run_dir: Path) -> None:
    """A tracker holds every scalar of the event file at its steps, each step once and in order, with its
    value (TensorBoard keeps float32)."""
    want = tensorboard_scalars(run_dir)
    for tag, points in want.items():
        steps = [s for s, _ in got.get(tag, [])]
        assert steps == [s for s, _ in points], tag
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), (
            f"{tag}: a step twice or out of order: {steps}"
        )
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


# --- MLflow ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite backend store for the module (making one takes MLflow seconds); each test an experiment of
    its own, with its artifacts in a local folder."""
    require_extra("mlflow", "mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db", root


def experiment(store, name: str, artifacts: Path | None = None) -> str:
    from mlflow import MlflowClient

    uri, root = store
    MlflowClient(uri).create_experiment(name, artifact_location=str(artifacts or root / name))
    return name


def mlflow_runs(store, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(store[0])
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def mlflow_scalars(store, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(store[0])
    keys = client.get_run(run_id).data.metrics
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def artifacts(store, run_id: str, path: str | None = None) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(store[0])
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(store, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.mark.slow
def test_mlflow_gets_what_tensorboard_gets_one_run_per_job(store, tmp_path):
    """A sweep of two jobs (`-m`, in one process): two MLflow runs, each with its own config and the curves,
    pictures, final metrics and files of its own run directory."""
    name = experiment(store, "same")
    proc = run_cli(["-m", "trainer.seed=0,1", *FAST, *EVERY_STEP, "logging.trackers=[mlflow]", "tags=[baseline]",
                    f"logging.mlflow.tracking_uri={store[0]}", f"logging.mlflow.experiment_name={name}",
                    f"paths.multirun_root={tmp_path}"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    runs = sorted(mlflow_runs(store, name), key=lambda r: r.data.params["trainer.seed"])
    assert [r.data.params["trainer.seed"] for r in runs] == ["0", "1"]
    for job, run in enumerate(runs):
        run_dir = Path(run.data.tags["run_dir"])
        assert run_dir.parent.parent.parent == tmp_path and run_dir.name == str(job)
        assert json.loads(RunDir(run_dir).trackers.read_text()) == {"mlflow": run.info.run_id}
        assert run.info.status == "FINISHED" and run.info.run_name == f"{run_dir.parent.name}/{job}"
        assert run.data.tags["tags"] == "baseline"
        got = mlflow_scalars(store, run.info.run_id)
        assert_same_scalars(got, run_dir)
        # The final metrics that TensorBoard has no curve of, at the last step.
        metrics = read_metrics(run_dir)
        assert got["epochs"] == [(3, 1.0)] and got["val/acc_last"] == [(3, metrics["val/acc_last"])]
        # The config, flattened; the pictures, texts, metrics.json and the best checkpoint.
        params = run.data.params
        assert params["trainer.limit_batches"] == "3" and params["logging.trackers"] == '["mlflow"]'
        assert params["model._target_"] == "models.mlp.MLP"
        files = artifacts(store, run.info.run_id)
        assert {"metrics.json", "checkpoints/best.pt", "text/run/config/step_00000000.md"} <= set(files)
        for picture in ("inputs~train_batch+step+0+", "val~confusion_matrix+step+3+"):
            assert any(f.startswith(f"images/{picture}") and f.endswith(".png") for f in files), picture


def start(args: list[str], env: dict) -> subprocess.Popen:
    import os

    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([PYTHON, "train.py", *args], cwd=REPO, env=full, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.slow
def test_kill9_and_resume_go_on_with_the_same_mlflow_run(store, tmp_path):
    """MLflow named by its own environment variables; killed right after the step-2 checkpoint (it may have
    logged a step past it), resumed: one run, finished, every step once, TensorBoard's values."""
    name = experiment(store, "resumed")
    env = {"MLFLOW_TRACKING_URI": store[0], "MLFLOW_EXPERIMENT_NAME": name}
    run_dir = tmp_path / "run"
    args = ["trainer.max_epochs=2", "trainer.limit_batches=3", "data.batch_size=32", "logging.progress_bar=false",
            *EVERY_STEP, "trainer.checkpoint_every_n_steps=2", "logging.trackers=[mlflow]"]  # fmt: skip
    victim = start([*args, f"hydra.run.dir={run_dir}"], env)
    step2 = RunDir(run_dir).step_checkpoint(2)
    assert kill9_once_written(victim, step2) == -signal.SIGKILL, "the victim finished first"
    assert not RunDir(run_dir).metrics.exists()
    (killed,) = mlflow_runs(store, name)
    assert killed.info.status == "RUNNING"

    resumed = run_cli([f"resume={run_dir}"], env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    (run,) = mlflow_runs(store, name)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert_same_scalars(mlflow_scalars(store, run.info.run_id), run_dir)
    assert [s for s, _ in mlflow_scalars(store, run.info.run_id)["train/loss"]] == list(range(1, 7))


def test_a_resume_logs_no_step_that_mlflow_holds(store, tmp_path):
    """What the killed run logged past its checkpoint is not logged again: the resumed run's writer goes on
    from the checkpoint's step, and MLflow keeps the first value of each step."""
    from omegaconf import OmegaConf

    from board.trackers import tracking
    from board.writer import writing
    from setup.config import LoggingSchema, MlflowSchema

    name = experiment(store, "held")
    settings = LoggingSchema(graph=False, every_n_steps=1, progress_bar=False, images=False,
                             histograms_every_n_epochs=0, lr_per_group=False, trackers=["mlflow"],
                             mlflow=MlflowSchema(tracking_uri=store[0], experiment_name=name))  # fmt: skip
    cfg = OmegaConf.create({"trainer": {"seed": 0}})
    for first, last, resumed in ((1, 5, False), (3, 7, True)):  # killed at 5 after a checkpoint at 2
        with writing(tmp_path / "tb") as writer, tracking(writer, cfg, settings, tmp_path, resumed):
            for step in range(first, last + 1):
                writer.add_scalar("train/loss", float(step), step)
                if step >= 6:  # a scalar that the killed run never logged
                    writer.add_scalar("train/late", float(step), step)
    (run,) = mlflow_runs(store, name)
    got = mlflow_scalars(store, run.info.run_id)
    assert got == {"train/loss": [(s, float(s)) for s in range(1, 8)], "train/late": [(6, 6.0), (7, 7.0)]}


def test_an_mlflow_that_fails_mid_run_is_one_warning(store, tmp_path, caplog):
    """Its store refuses every write from step 2 on (a trigger in the SQLite database, for this experiment's
    runs: a disk full, a server gone): MLflow is off from there, with one warning, and the run finishes."""
    import sqlite3

    from mlflow import MlflowClient

    name = experiment(store, "failing")
    number = MlflowClient(store[0]).get_experiment_by_name(name).experiment_id
    with sqlite3.connect(store[1] / "mlflow.db") as db:
        db.execute(f"""CREATE TRIGGER full_disk BEFORE INSERT ON metrics WHEN NEW.step >= 2 AND NEW.run_uuid IN
                       (SELECT run_uuid FROM runs WHERE experiment_id = {number})
                       BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END""")
    with caplog.at_level(logging.WARNING):
        train_in_process([*FAST, *EVERY_STEP, "logging.trackers=[mlflow]", f"logging.mlflow.tracking_uri={store[0]}",
                          f"logging.mlflow.experiment_name={name}"], tmp_path / "run")  # fmt: skip
    assert read_metrics(tmp_path / "run")["steps"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("mlflow failed while logging scalars at step 2"), warned
    assert "it is off for the rest of this run" in warned[0]
    (run,) = mlflow_runs(store, name)
    steps = {key: [s for s, _ in points] for key, points in mlflow_scalars(store, run.info.run_id).items()}
    assert (
        run.info.status == "RUNNING" and steps["train/loss"] == [1] and all(v == [1] for v in steps.values())
    )
    assert [s for s, _ in tensorboard_scalars(tmp_path / "run")["train/loss"]] == [
        1,
        2,
        3,
    ]  # TensorBoard went on


# --- W&B --------------------------------------------------------------------------------------------------------


def wandb_records(run_dir: Path, path: Path | None = None) -> list:
    """Every record of W&B's offline log (`run-<id>.wandb`): a LevelDB-style log of 32 KiB blocks, each
    record a protobuf in one or more chunks (crc32, length, type: full, first, middle, last), after a 7-byte
    header. W&B ships no reader in Python since 0.19; the format is its own documented one."""
    import wandb
    from wandb.proto import wandb_internal_pb2

    wandb.teardown()  # W&B's service writes the log: its end, the whole log on disk (a run's exit does the same)

    if path is None:
        (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += room
            continue
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def history_key(item) -> str:
    """A history item's name: W&B stores `train/loss` as the nested key (train, loss)."""
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_gets_what_tensorboard_gets(tmp_path, monkeypatch):
    require_extra("wandb", "wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_CONSOLE": "off", "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the files go into the run directory
    run_dir = tmp_path / "run"
    train_in_process(
        [*FAST, *EVERY_STEP, "logging.trackers=[wandb]", "logging.wandb.project=template"], run_dir
    )
    records = wandb_records(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert json.loads(RunDir(run_dir).trackers.read_text()) == {"wandb": run.run_id}
    assert run.project == "template" and run.display_name == "run"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["trainer.limit_batches"] == 3 and config["model._target_"] == "models.mlp.MLP"
    got: dict[str, list] = {}
    pictures = set()
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {history_key(item): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                if isinstance(value, float | int) and not key.startswith("_"):
                    got.setdefault(key, []).append((row["_step"], value))
                elif key.endswith("/_type") and value == "image-file":
                    pictures.add((key.removesuffix("/_type"), row["_step"]))
    assert_same_scalars({k: v for k, v in got.items() if "/" in k}, run_dir)
    assert {("inputs/train_batch", 0), ("val/confusion_matrix", 3)} <= pictures
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary |= {item.key: json.loads(item.value_json) for item in record.summary.update if item.key}
    assert summary["test/acc"] == pytest.approx(read_metrics(run_dir)["test/acc"])
    logged = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [sorted(e.path for e in a.manifest.contents) for a in logged] == [
        ["checkpoints/best.pt", "metrics.json"]
    ]
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]


def test_a_resumed_wandb_run_keeps_its_id(tmp_path, monkeypatch):
    """resume= goes on with the W&B run of trackers.json (offline: a second local directory of that id,
    which `wandb sync` uploads into the same run), each with its own steps."""
    require_extra("wandb", "wandb")
    from omegaconf import OmegaConf

    from board.trackers import tracking
    from board.writer import writing
    from setup.config import LoggingSchema, WandbSchema

    for key, value in {"WANDB_CONSOLE": "off", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    settings = LoggingSchema(graph=False, every_n_steps=1, progress_bar=False, images=False,
                             histograms_every_n_epochs=0, lr_per_group=False, trackers=["wandb"],
                             wandb=WandbSchema(mode="offline", project="template"))  # fmt: skip
    cfg = OmegaConf.create({"trainer": {"seed": 0}})
    for first, last, resumed in ((1, 2, False), (3, 4, True)):
        with writing(tmp_path / "tb") as writer, tracking(writer, cfg, settings, tmp_path, resumed):
            for step in range(first, last + 1):
                writer.add_scalar("train/loss", float(step), step)
    (run_id,) = json.loads(RunDir(tmp_path).trackers.read_text()).values()
    logs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert [p.name for p in logs] == [f"run-{run_id}.wandb"] * 2
    steps = []
    for log in logs:
        records = wandb_records(tmp_path, log)
        rows = [r.history for r in records if r.WhichOneof("record_type") == "history"]
        steps.append(
            [json.loads(i.value_json) for row in rows for i in row.item if history_key(i) == "train/loss"]
        )
    assert steps == [[1, 2], [3, 4]]  # each step's loss is the step


# --- Refused up front ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tracker", ["comet", *known()])
def test_a_tracker_unknown_or_not_installed_is_refused_by_the_schema(tracker, tmp_path, monkeypatch):
    """As on a machine without the package: None in sys.modules is what import and importlib.util.find_spec
    both take for "not there" (the check only looks for it, never imports it)."""
    import sys

    from board.trackers import _module
    from setup.config import ConfigError, check_config
    from tests.helpers import compose_config

    cfg = compose_config([f"logging.trackers=[{tracker}]"], tmp_path / "run")
    if tracker == "comet":
        message = f"logging.trackers: 'comet' is not a tracker (known: {', '.join(known())})"
    else:
        package = _module(tracker).PACKAGE
        monkeypatch.setitem(sys.modules, package, None)
        message = f"logging.trackers=[{tracker}] needs {package}, which is not installed: pip install -e '.[{tracker}]'"
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == message


@pytest.mark.slow
def test_a_tracker_not_installed_is_one_line_and_leaves_nothing(tmp_path):
    """The same from the command line: a sitecustomize (on PYTHONPATH, run at start-up) marks the package
    absent; train.py says so in one line, exit 2, before it has made anything."""
    from board.trackers import _module

    tracker = known()[0]
    package = _module(tracker).PACKAGE
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{package!r}] = None\n")
    proc = run_cli([*FAST, f"logging.trackers=[{tracker}]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                   env={"PYTHONPATH": str(site)})  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    lines = out.strip().splitlines()
    assert (
        len(lines) == 1
        and f"needs {package}, which is not installed: pip install -e '.[{tracker}]'" in lines[0]
    )
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != site], (
        "a rejected run left files"
    )
