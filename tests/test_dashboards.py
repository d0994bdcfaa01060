"""The dashboards of issue #7, read back with TensorBoard's own reader (and, for HPARAMS, its server):
input images, confusion matrix and per-class accuracy, config and environment text, env.json, hparams,
histograms and per-group learning rates."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from board import dashboards, pictures
from board.pictures import (
    colormap,
    confusion_matrix_image,
    input_image_grid,
    per_class_accuracy,
    per_class_accuracy_image,
)
from loop.evaluation import evaluate
from setup.config import ConfigError, check_config
from tasks.classification import Classification
from tests.helpers import FAST, REPO, compose_config, event_accumulator, read_metrics, train_in_process

# The HPARAMS metric columns of a classification run, in the order the task gives them.
METRIC_TAGS = ["val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"]

# Everything on, and one config value set on the command line, as a sweep would.
ALL_ON = [
    *FAST,
    "logging.histograms_every_n_epochs=1",
    "logging.lr_per_group=true",
    "model.dropout=0.2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dashboards") / "run"
    train_in_process(ALL_ON, run_dir)
    return run_dir, event_accumulator(run_dir)


def decode(image_event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))


def text_of(acc, tag: str) -> str:
    return acc.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


# --- Images, built without a run -------------------------------------------------------------------------


def test_input_grid_undoes_the_normalization_and_enlarges_small_images():
    raw = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = input_image_grid((raw - 0.3) / 0.38, mean=[0.3], std=[0.38], min_size=32)
    first = raw[0, 0].repeat_interleave(4, 0).repeat_interleave(4, 1)  # 8 px -> 32 px, nearest
    assert grid.shape == (3, 36, 3 * 34 + 2)  # one row of three 32 px images, 2 px padding
    for channel in grid:
        torch.testing.assert_close(channel[2:34, 2:34], first, atol=1e-6, rtol=0)


def test_confusion_matrix_image_colours_each_cell_by_its_row_share():
    cm = torch.tensor([[8, 2, 0], [0, 5, 5], [0, 0, 0]])
    image = confusion_matrix_image(cm)
    cell = 48  # 3 classes: the largest cells
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    top, left = image.shape[1] - 3 * cell, image.shape[2] - 3 * cell
    assert top > 0 and left > 0  # room for the class indices
    share = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    for i in range(3):
        for j in range(3):
            centre = image[:, top + i * cell + cell // 2, left + j * cell + cell // 2]
            assert centre.tolist() == colormap(share[i, j]).tolist(), (i, j)
    assert colormap(torch.tensor(1.0)).tolist() != colormap(torch.tensor(0.0)).tolist()
    # Many classes: one pixel a class, no labels, and still a readable size.
    assert confusion_matrix_image(torch.eye(1000, dtype=torch.long)).shape == (3, 1000, 1000)


def test_add_png_stores_the_image_pixel_for_pixel(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    image = confusion_matrix_image(torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 9]]))
    with SummaryWriter(tmp_path / "tb") as writer:
        pictures.add_png(writer, "val/confusion_matrix", image, 3)
    (event,) = event_accumulator(tmp_path).Images("val/confusion_matrix")
    assert (event.step, event.height, event.width) == (3, image.shape[1], image.shape[2])
    assert np.array_equal(decode(event), image.permute(1, 2, 0).numpy())


def test_per_class_accuracy_marks_absent_classes_and_draws_bars_to_scale():
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    accuracy = per_class_accuracy(cm)
    assert accuracy[0] == 0.75 and accuracy[2] == 0.5 and torch.isnan(accuracy[1])
    bars = per_class_accuracy_image(accuracy, width=200)
    row = bars.shape[1] // 3
    left = bars.shape[2] - 200

    def bar_length(k: int) -> int:
        line = bars[:, k * row + row // 2, left:]
        return int((line != torch.tensor([48, 48, 48], dtype=torch.uint8).view(3, 1)).any(0).sum())

    assert bar_length(0) == 150 and bar_length(2) == 100
    assert int(bars[:, row + row // 2, left:].sum()) == 0  # absent class: an empty row


# --- The confusion matrix from evaluate() ----------------------------------------------------------------


def test_evaluate_counts_true_against_predicted_classes():
    # Logits are the inputs, so each sample's prediction is chosen by the test.
    pred = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    true = torch.tensor([0, 1, 2, 1, 1, 2, 2])
    x = torch.nn.functional.one_hot(pred, 3).float()
    batches = [(x[:4], true[:4]), (x[4:], true[4:])]
    metrics, sums, _ = evaluate(torch.nn.Identity(), batches, Classification(3), torch.device("cpu"), "32")
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(sums["confusion"].view(3, 3), expected)
    assert metrics["acc"] == pytest.approx(expected.trace().item() / 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_does_not_sync_per_batch_on_cuda():
    """The confusion counts stay on the device: 20 batches cost the host no more syncs than 2."""
    model = torch.nn.Linear(16, 10).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)

    def syncs(n_batches: int) -> int:
        batches = [
            (
                torch.randn(64, 16, device="cuda", generator=generator),
                torch.randint(0, 10, (64,), device="cuda", generator=generator),
            )
            for _ in range(n_batches)
        ]
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _, sums, _ = evaluate(model, batches, Classification(10), torch.device("cuda"), "32")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert sums["confusion"].sum() == 64 * n_batches
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(2)  # warm-up: CUDA's and cuBLAS's one-off initialization may sync once
    assert syncs(2) == syncs(20)


# --- One real run with everything on ---------------------------------------------------------------------


def test_first_batch_is_logged_as_denormalized_images(run):
    _, acc = run
    (event,) = acc.Images("inputs/train_batch")
    assert event.step == 0
    assert (event.width, event.height) == (8 * 34 + 2, 4 * 34 + 2)  # 32 digits, 8 px enlarged to 32 px
    # Digits are 0..16 / 16 before normalization: denormalized pixels fall on that lattice (x 255);
    # normalized ones would not (e.g. (5/16 - 0.3) / 0.38 * 255 = 8).
    lattice = np.array([k * 255 / 16 for k in range(17)])
    values = np.unique(decode(event))
    assert np.abs(values[:, None] - lattice[None, :]).min(axis=1).max() <= 1.0
    assert values.max() >= 254  # white strokes: the full range is used


def test_each_validation_logs_a_confusion_matrix_and_per_class_accuracy(run):
    run_dir, acc = run
    (val_acc,) = acc.Scalars("val/acc")
    for tag in ("val/confusion_matrix", "val/per_class_accuracy"):
        (event,) = acc.Images(tag)
        assert event.step == val_acc.step
    matrix = decode(acc.Images("val/confusion_matrix")[0])
    assert matrix.shape[0] > 10 * 48 and matrix.shape[1] > 10 * 48  # 10 classes of 48 px, plus labels
    # Per-class accuracy, weighted by the class counts of the validation split, is the accuracy.
    from data.digits import digits

    labels = digits(0.15, 0.15, 42, [0.3], [0.38]).val.tensors[1]
    counts = torch.bincount(labels, minlength=10)
    per_class = {
        int(t.rsplit("/", 1)[1]): acc.Scalars(t)[0].value for t in acc.Tags()["scalars"] if "class_acc" in t
    }
    assert sorted(per_class) == [k for k in range(10) if counts[k]]
    weighted = sum(per_class[k] * counts[k].item() for k in per_class) / counts.sum().item()
    assert weighted == pytest.approx(val_acc.value, abs=1e-6)


def test_resolved_config_is_a_text_entry(run, tmp_path):
    _, acc = run
    text = text_of(acc, "run/config")
    assert "model.dropout=0.2" in text  # the overrides head the entry
    logged = yaml.safe_load(re.search(r"```yaml\n(.*)```", text, re.S).group(1))
    cfg = compose_config(ALL_ON, tmp_path)
    check_config(cfg)
    assert logged == OmegaConf.to_container(cfg, resolve=True)


def test_environment_goes_to_env_json_and_the_text_tab(run):
    run_dir, acc = run
    env = json.loads((run_dir / "env.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git"]["commit"] == head.stdout.strip()
        assert isinstance(env["git"]["dirty"], bool)
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(env["packages"]) == {"torch", "torchvision", "tensorboard", "hydra-core", "omegaconf", "numpy"}
    assert env["device"]["type"] == ("cuda" if torch.cuda.is_available() else "cpu") and env["device"]["name"]
    text = text_of(acc, "run/environment")
    assert env["git"]["commit"] in text and env["packages"]["tensorboard"] in text


def test_environment_outside_a_git_repository_says_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboards, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert dashboards.environment_info()["git"] == {"commit": "unknown", "dirty": "unknown"}


def test_hparams_and_final_metrics_are_in_the_runs_own_event_file(run):
    run_dir, acc = run
    # One stream, no subfolder of the kind add_hparams makes.
    entries = list((run_dir / "tb").iterdir())
    assert not [p for p in entries if p.is_dir()]
    assert len([p for p in entries if p.name.startswith("events.out.tfevents")]) == 1
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}
    assert hparams == {
        "task": "classification",
        "model": "mlp",
        "data": "digits",
        "optimizer": "adamw",
        "scheduler": "cosine",
        "lr": pytest.approx(3e-3),
        "batch_size": 32,
        "precision": "32",
        "seed": 42,
        "trainer.max_epochs": 1,
        "trainer.limit_batches": 3,
        "model.dropout": pytest.approx(0.2),
    }
    assert {h.name for h in experiment.hparam_infos} == set(hparams)
    assert [m.name.tag for m in experiment.metric_infos] == list(METRIC_TAGS)
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS
    # Every metric the table shows is a scalar of this stream; the final ones match metrics.json.
    metrics = read_metrics(run_dir)
    for tag in METRIC_TAGS:
        assert acc.Scalars(tag), tag
    for tag in ("test/acc", "test/loss", "val/acc_best"):
        assert acc.Scalars(tag)[-1].value == pytest.approx(metrics[tag])


def test_histograms_of_weights_and_gradients_and_lr_per_group(run):
    _, acc = run
    from models.mlp import MLP

    names = [
        n for n, _ in MLP(input_shape=[1, 8, 8], num_outputs=10, hidden_dims=[256, 128]).named_parameters()
    ]
    histograms = acc.Tags()["histograms"]
    assert sorted(histograms) == sorted([f"weights/{n}" for n in names] + [f"grads/{n}" for n in names])
    for name in names:
        (grads,) = acc.Histograms(f"grads/{name}")
        assert grads.step == 3  # the last step of epoch 1 (three batches)
        assert grads.histogram_value.sum_squares > 0  # real gradients, not the zeros after zero_grad
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert [e.value for e in acc.Scalars("train/lr_group0")] == pytest.approx(lr)


# --- Switches ------------------------------------------------------------------------------------------


def test_switched_off_dashboards_write_nothing(tmp_path):
    train_in_process([*FAST, "logging.images=false", "task.confusion_matrix=false"], tmp_path / "run")
    tags = event_accumulator(tmp_path / "run").Tags()
    assert tags["images"] == [] and tags["histograms"] == []  # histograms are off by default
    assert not [t for t in tags["scalars"] if "class_acc" in t or "lr_group" in t]


def test_negative_histogram_interval_is_rejected(tmp_path):
    cfg = compose_config(["logging.histograms_every_n_epochs=-1"], tmp_path)
    with pytest.raises(ConfigError, match="histograms_every_n_epochs=-1 must be 0"):
        check_config(cfg)


# --- The HPARAMS dashboard of a real TensorBoard server, over two runs of a sweep -------------------------


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_compares_the_runs_of_a_sweep(tmp_path):
    for k, lr in enumerate(("1e-3", "3e-3")):
        train_in_process([*FAST, f"optimizer.lr={lr}"], tmp_path / str(k))
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1"]
        + ["--port", "0", "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        for line in server.stdout:
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                url = found.group(1) + "/data/plugin/hparams"
                break
        assert url, "TensorBoard did not report its address"
        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING", "STATUS_FAILURE"],
            "colParams": [{"hparam": "lr"}, {"metric": {"tag": "test/acc"}}],
            "startIndex": 0,
            "sliceSize": 10,
            "includeMetrics": True,
        }
        deadline = time.monotonic() + 60
        while True:
            groups = _post(url + "/session_groups", request).get("sessionGroups", [])
            if len(groups) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        experiment = _post(url + "/experiment", {"experimentName": "", "includeMetrics": True})
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert {h["name"] for h in experiment["hparamInfos"]} >= {"model", "data", "optimizer", "lr", "seed"}
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == set(METRIC_TAGS)
    assert len(groups) == 2
    for k, lr in enumerate((1e-3, 3e-3)):
        group = next(g for g in groups if g["hparams"]["lr"] == pytest.approx(lr))
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["test/acc"] == pytest.approx(read_metrics(tmp_path / str(k))["test/acc"])
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
