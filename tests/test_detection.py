"""Object detection (issue 19), the shipped worked example of a batch that is not a tensor: the boxes data
(a variable number of boxes an image, batched by its collate function), the FCOS detector (its losses in
train mode, boxes in eval mode), the task's mean average precision against hand cases and its one-line
checks; then for real: a run logs each loss and val map50/map with its pictures, eval.py agrees with it,
and DDP over two processes measures the whole split (kill -9 and resume: tests/test_resume.py's matrix)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch

from tests.helpers import (
    PYTHON,
    REPO,
    event_accumulator,
    needs,
    read_metrics,
    run_cli,
)

pytestmark = needs("conf/task/detection.yaml", "conf/data/boxes.yaml", "conf/model/detector.yaml")

# A few steps on a few images: 2 epochs of 8 batches of 8, validation on 4 batches.
RUN = ["task=detection", "data=boxes", "model=detector", "data.dataset.num_train=64", "data.dataset.num_val=32",
       "data.dataset.num_test=32", "data.batch_size=8", "trainer.max_epochs=2", "logging.every_n_steps=2",
       "logging.progress_bar=false", "logging.images=false"]  # fmt: skip
BOXES_KW = dict(
    num_train=64, num_val=8, num_test=8, image_size=32, max_shapes=3, mean=[0.3] * 3, std=[0.3] * 3
)


def detection():
    from tasks.detection import Detection

    return Detection(
        num_classes=3, classes=["rectangle", "ellipse", "triangle"], mean=[0.3] * 3, std=[0.3] * 3
    )


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def predicted(boxes, scores, labels):
    return {**target(boxes, labels), "scores": torch.tensor(scores)}


# --- The data --------------------------------------------------------------------------------------------


def test_each_box_is_exactly_its_shape_and_the_number_of_boxes_varies():
    from data.boxes import render_boxes

    images, boxes, labels, count = render_boxes(200, 32, 3, torch.Generator().manual_seed(0), noise=0.0)
    assert set(count.tolist()) == {1, 2, 3} and set(labels[count == 3].flatten().tolist()) == {0, 1, 2}
    # Shapes are bright in every channel (>= 0.55), the background dark (<= 0.35): no noise here.
    bright = images.amin(dim=1) > 0.45
    covered = torch.zeros_like(bright)
    for i, n in enumerate(count.tolist()):
        for x1, y1, x2, y2 in boxes[i, :n].long().tolist():
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
            inside = bright[i, y1:y2, x1:x2]
            # Tight: the box's outer rows and columns each hold some of the shape.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[i, y1:y2, x1:x2] = True
    assert not (bright & ~covered).any()  # no shape pixel outside every box


def test_the_same_seed_draws_the_same_data_and_samples_batch_through_collate():
    from data.boxes import DatasetError, boxes, collate

    a, b, other = boxes(seed=0, **BOXES_KW), boxes(seed=0, **BOXES_KW), boxes(seed=1, **BOXES_KW)
    for i in range(len(a.train)):
        (xa, ta), (xb, tb) = a.train[i], b.train[i]
        assert torch.equal(xa, xb) and torch.equal(ta["boxes"], tb["boxes"])
        assert torch.equal(ta["labels"], tb["labels"])
    assert not torch.equal(a.train[0][0], other.train[0][0])
    assert (len(a.train), len(a.val), len(a.test)) == (64, 8, 8)

    images, targets = collate([a.train[i] for i in range(5)])
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert [t["boxes"].shape[1] for t in targets] == [4] * 5
    assert all(t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64 for t in targets)
    assert len({len(t["labels"]) for t in (a.train[i][1] for i in range(64))}) == 3  # 1, 2 and 3 boxes
    with pytest.raises(DatasetError, match="max_shapes"):
        boxes(seed=0, **{**BOXES_KW, "max_shapes": 5})


# --- The model -------------------------------------------------------------------------------------------


def test_the_detector_returns_its_losses_in_train_mode_and_boxes_in_eval_mode():
    from models.detector import Detector

    torch.manual_seed(0)
    model = Detector(num_classes=3, image_size=32)
    images = torch.randn(2, 3, 32, 32)
    losses = model(images, [target([[2, 3, 20, 18]], [1]), target([[0, 0, 8, 8], [16, 16, 30, 31]], [0, 2])])
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        found = model.eval()(images)
    assert len(found) == 2 and all(set(f) == {"boxes", "scores", "labels"} for f in found)
    # The images go in at their own size: boxes in their pixels, never beyond them.
    assert all(((f["boxes"] >= 0) & (f["boxes"] <= 32)).all() for f in found)
    with pytest.raises(ValueError, match="levels"):
        Detector(num_classes=3, image_size=32, stages=2, levels=3)


# --- The task --------------------------------------------------------------------------------------------


def measured(task, *batches):
    metrics = task.init_metrics(torch.device("cpu"))
    for output, targets in batches:
        task.update(metrics, output, (None, targets))
    return task.compute(metrics)


def test_mean_average_precision_against_hand_cases():
    t = detection()
    truth = [target([[10, 10, 30, 30]], [0]), target([[0, 0, 10, 10], [20, 0, 30, 8]], [1, 2])]
    exact = [predicted(b["boxes"].tolist(), [0.9] * len(b["labels"]), b["labels"].tolist()) for b in truth]
    assert measured(t, (exact, truth)) == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}
    # Image by image, in two batches, the same.
    assert measured(t, (exact[:1], truth[:1]), (exact[1:], truth[1:])) == measured(t, (exact, truth))
    # One box of IoU 400/480 = 0.83: a hit at IoU 0.50 ... 0.80 (7 of COCO's 10 thresholds), a miss above.
    loose = [predicted([[10, 10, 30, 34]], [0.9], [0])]
    assert measured(t, (loose, truth[:1])) == {"map50": pytest.approx(1.0), "map": pytest.approx(0.7)}
    # The right place with the wrong class finds nothing; so does no box at all.
    assert measured(t, ([predicted([[10, 10, 30, 30]], [0.9], [1])], truth[:1]))["map50"] == 0.0
    assert measured(t, ([predicted([], [], [])], truth[:1]))["map50"] == 0.0


def test_the_loss_is_the_models_dict_and_forward_gives_targets_in_train_mode_only():
    t = detection()
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images, targets=None):
            seen.append(targets)
            return {"a": images.sum()} if self.training else [{}] * len(images)

    images, targets = torch.ones(2, 3, 8, 8), [target([[0, 0, 4, 4]], [0])] * 2
    model = Recorder()
    assert t.loss(t.forward(model, (images, targets)), None) == {"a": torch.tensor(384.0)}
    t.forward(model.eval(), (images, targets))
    assert seen == [targets, None] and t.count((images, targets)) == 2
    from tasks.base import TaskError

    with pytest.raises(TaskError, match="dict of losses in train mode .* got list"):
        t.loss([{}], None)


@pytest.mark.parametrize(
    ("output", "batch", "message"),
    [
        (None, torch.zeros(2, 3, 8, 8), r"batches of \(images .* got float32 \[2, 3, 8, 8\]; .*data.collate_fn"),
        (None, (torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), "a list of 2 targets, one per image"),
        (None, (torch.zeros(1, 3, 8, 8), [target([[0, 0, 4]], [0])]), r"float boxes \[n, 4\] .* got float32 \[1, 3\]"),
        (None, (torch.zeros(1, 3, 8, 8), [target([[0, 0, 4, 4]], [[0]])]), r"integer labels \[n\], one per box"),
        (None, (torch.zeros(1, 3, 8, 8), [target([[0, 0, 4, 4]], [3])]), r"sample 0 of the batch checked before training: labels\[0\] = 3 is outside 0..2 \(data.num_classes=3\)"),
        (torch.zeros(1, 3), (torch.zeros(1, 3, 8, 8), [target([[0, 0, 4, 4]], [0])]), r"one dict of boxes, scores and labels per image in eval mode \(a list of 1\), got float32 \[1, 3\]"),
        ([{"boxes": 0}], (torch.zeros(1, 3, 8, 8), [target([[0, 0, 4, 4]], [0])]), r"a dict with \['boxes', 'labels', 'scores'\], got \['boxes'\]"),
    ],
)  # fmt: skip
def test_checks_say_in_one_line_what_does_not_look_like_detection(output, batch, message):
    from tasks.base import TaskError

    with pytest.raises(TaskError, match=message) as caught:
        detection().check(output, batch)
    assert "\n" not in str(caught.value)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("boxes", "labels", "message"),
    [
        ([[0, 0, 4, 4], [5, 2, 1, 8]], [0, 1], r"boxes\[1\] = \[5.0, 2.0, 1.0, 8.0\] has x2 <= x1 \("),
        ([[0, 0, 4, 4], [5, 2, 5, 8]], [0, 1], r"boxes\[1\] = \[5.0, 2.0, 5.0, 8.0\] has x2 <= x1 \("),  # no width
        ([[1, 8, 5, 3]], [2], r"boxes\[0\] = \[1.0, 8.0, 5.0, 3.0\] has y2 <= y1 \("),
        ([[1, 2, INF, 8]], [0], r"boxes\[0\] = \[1.0, 2.0, inf, 8.0\] is not finite"),
        ([[-INF, 2, 3, 8]], [0], r"boxes\[0\] = \[-inf, 2.0, 3.0, 8.0\] is not finite"),
        ([[0, 0, 4, 4], [NAN, 2, 4, 8]], [0, 0], r"boxes\[1\] = \[nan, 2.0, 4.0, 8.0\] is not finite"),
        ([[0, 0, 4, 4], [1, 1, 2, 2]], [0, 99], r"labels\[1\] = 99 is outside 0..2 \(data.num_classes=3\)"),
        ([[0, 0, 4, 4]], [-1], r"labels\[0\] = -1 is outside 0..2 \(data.num_classes=3\)"),
        ([[0, 0, 4, 4]], [3], r"labels\[0\] = 3 is outside 0..2 \(data.num_classes=3\)"),
    ],
)  # fmt: skip
def test_check_batch_names_the_sample_the_field_and_the_value_of_a_bad_target(boxes, labels, message):
    from tasks.base import TaskError

    # The bad target is the third of four; the first sample has no box at all, which is fine.
    good, empty = (
        target([[0, 0, 4, 4]], [2]),
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    )
    batch = (torch.zeros(4, 3, 8, 8), [empty, good, target(boxes, labels), good])
    with pytest.raises(
        TaskError, match=rf"^detection target: sample 2 of evaluation batch 5: {message}"
    ) as caught:
        detection().check_batch(batch, "evaluation batch 5")
    assert "\n" not in str(caught.value)
    detection().check_batch((batch[0], [good, good, good, target([[0, 0, 1, 1], [7, 7, 8, 8]], [0, 2])]))


def test_log_pictures_draws_the_true_and_the_predicted_boxes(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from data.boxes import boxes, collate

    t = detection()
    images, targets = collate([boxes(seed=0, **BOXES_KW).val[i] for i in range(3)])

    def oracle(x):  # predicts the true boxes of the first len(x) images, each scored 0.9
        return [
            {**targets[i], "scores": torch.full((len(targets[i]["labels"]),), 0.9)} for i in range(len(x))
        ]

    writer = SummaryWriter(tmp_path / "tb")
    t.num_pictures = 2
    t.log_pictures(writer, None, oracle, (images, targets), step=7)
    writer.close()
    (image,) = event_accumulator(tmp_path).Images("val/boxes_true_predicted")
    # 32 px images enlarged 6x (to 192): 2 rows, 2 panels a row, 2 px apart.
    assert (image.step, image.height, image.width) == (7, 2 * (192 + 2) + 2, 2 * (192 + 2) + 2)
    # The predictions are the true boxes: both panels of a row alike, but for the scores in the labels.
    canvas = t.box_rows(images[:1], targets[:1], oracle(images[:1]))
    left, right = canvas[:, 2:194, 2:194], canvas[:, 2:194, 196:388]
    assert 0.9 < (left == right).all(dim=0).float().mean() < 1.0
    unsure = [{**p, "scores": p["scores"] * 0.5} for p in oracle(images[:1])]  # below picture_score: none
    plain = t.box_rows(images[:1], targets[:1], unsure)[:, 2:194, 196:388]
    assert not torch.equal(plain, right) and not torch.equal(plain, left)


# --- For real: train.py, eval.py, torchrun ----------------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run = tmp_path_factory.mktemp("detection") / "whole"
    # The threads of the tests' runs (conftest.py), which a module's fixture runs before: the resumed run
    # must do the same float math to end bit-identical.
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = run_cli([*RUN, "trainer.checkpoint_every_n_steps=3", f"hydra.run.dir={run}"], env=threads)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run


@pytest.mark.slow
def test_a_run_logs_each_loss_and_map_with_its_pictures_and_eval_py_agrees(whole):
    metrics = read_metrics(whole)
    assert metrics["monitor"] == "val/map50" and metrics["mode"] == "max" and metrics["steps"] == 16
    assert {"test/map50", "test/map", "val/map50_best", "val/map_last"} <= set(metrics)
    assert not [k for k in metrics if "loss" in k]  # no validation loss
    acc = event_accumulator(whole)
    tags = set(acc.Tags()["scalars"])
    # Each of the detector's losses is a train scalar of its own, beside their sum; no train metric.
    assert {"train/loss", "train/classification", "train/bbox_regression", "train/bbox_ctrness"} <= tags
    assert {"val/map50", "val/map"} <= tags and not [t for t in tags if t.startswith("train/map")]
    assert [e.step for e in acc.Scalars("val/map50")] == [8, 16]
    assert [e.step for e in acc.Images("val/boxes_true_predicted")] == [8, 16]

    best = whole / "checkpoints" / "best.pt"
    done = subprocess.run([PYTHON, str(REPO / "eval.py"), f"ckpt={best}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    evaluated = read_metrics(whole / "checkpoints")
    for key in ("test/map50", "test/map"):
        assert evaluated[key] == pytest.approx(metrics[key]), key


@pytest.mark.slow
def test_torchrun_two_processes_measure_the_whole_split(tmp_path):
    """Each rank evaluates its half of the test split; the mAP is of the boxes of both (torchmetrics gathers
    them), so eval.py in one process on the same weights finds the same numbers."""
    from tests.test_ddp import DIGEST, torchrun

    run = tmp_path / "ddp"
    done = torchrun([*RUN, "data.batch_size=4", "trainer.max_epochs=1", f"hydra.run.dir={run}"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DDP: 2 processes, gloo backend" in (run / "train.log").read_text()
    found = dict(DIGEST.findall((run / "train.log").read_text() + (run / "train.rank1.log").read_text()))
    assert set(found) == {"0", "1"} and found["0"] == found["1"]
    best = run / "checkpoints" / "best.pt"
    evaluated = subprocess.run([PYTHON, str(REPO / "eval.py"), f"ckpt={best}"], cwd=REPO, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    for key in ("test/map50", "test/map"):
        assert read_metrics(run / "checkpoints")[key] == pytest.approx(read_metrics(run)[key]), key


def test_labels_beyond_the_classes_stop_before_training_in_one_line(tmp_path):
    done = run_cli([*RUN, "data.num_classes=2", "data.classes=[a,b]", f"paths.output_root={tmp_path}"])
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in out, out
    [line] = [x for x in out.splitlines() if "[ERROR]" in x]
    assert re.search(
        r"task=detection data=boxes model=detector: detection target: sample \d+ of the batch checked before "
        r"training: labels\[\d\] = 2 is outside 0..1 \(data.num_classes=2\)$",
        line,
    )
    assert not list(tmp_path.rglob("metrics.json"))


# One bad value in one sample, at a known place: (split, position in its first epoch, field, value, the line).
# 16 images a split in batches of 8: position 11 is sample 3 of the second batch; position 3 of val is in the
# batch checked before training. Each case is one short train.py run that stops at that batch: one for each
# place a batch is checked (training, validation, the check before training), and the label that used to
# train silently; the unit test above has every rule.
BAD_TARGETS = [
    ("train", 11, "boxes", "[5.0,2.0,1.0,8.0]",
     r"sample 3 of training batch 1 of epoch 0: boxes\[0\] = \[5.0, 2.0, 1.0, 8.0\] has x2 <= x1"),
    ("train", 11, "labels", "-1", r"sample 3 of training batch 1 of epoch 0: labels\[0\] = -1 is outside 0..2"),
    ("val", 3, "boxes", "[1.0,2.0,inf,8.0]",
     r"sample 3 of the batch checked before training: boxes\[0\] = \[1.0, 2.0, inf, 8.0\] is not finite"),
    ("val", 11, "boxes", "[nan,2.0,4.0,8.0]",
     r"sample 3 of val batch 1: boxes\[0\] = \[nan, 2.0, 4.0, 8.0\] is not finite"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("split", "position", "field", "value", "line"),
    BAD_TARGETS,
    ids=["train-x2<x1", "train-label-1", "val-inf-first-batch", "val-nan"],
)
def test_a_bad_target_stops_the_run_in_one_line_naming_the_sample(
    tmp_path, split, position, field, value, line
):
    """Before this check: torchvision's AssertionError traceback (x2 < x1), an IndexError traceback from the
    loss (label 99), a ValueError from the pictures (inf), or a run that ends with exit 0 (label -1, NaN)."""
    bad = [f"+data.dataset.{k}={v}" for k, v in (("split", split), ("position", position), ("field", field))]
    done = run_cli([*RUN, "data.dataset.num_train=16", "data.dataset.num_val=16", "data.dataset.num_test=8",
                    "trainer.max_epochs=1", "data.dataset._target_=tests.bad_boxes.bad_boxes", *bad,
                    f"+data.dataset.value={value}", f"paths.output_root={tmp_path}"])  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in out, out[-3000:]
    [error] = [x for x in out.splitlines() if "[ERROR]" in x]
    assert re.search(rf"detection target: {line} \(", error), error
    assert not list(tmp_path.rglob("metrics.json"))  # stopped at that batch, before any test
