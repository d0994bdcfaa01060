"""The segmentation task's metric math (mIoU against a hand count), its sums and checks, the shapes data
and the U-Net. A fork that deletes the task, the data or the model skips these."""

from __future__ import annotations

import math

import pytest
import torch

segmentation = pytest.importorskip("tasks.segmentation")
shapes = pytest.importorskip("data.shapes")
unet = pytest.importorskip("models.unet")

from tasks.base import TaskError  # noqa: E402

SHAPES_KW = dict(
    num_train=6, num_val=3, num_test=3, image_size=16, max_shapes=3, mean=[0.3] * 3, std=[0.3] * 3
)


def scores(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Model-like output [B, C, H, W] whose argmax is `pred`."""
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


def sums_of(t, pieces):
    sums = t.init_metrics(torch.device("cpu"))
    for output, b in pieces:
        t.update(sums, output, b)
    return sums


def test_miou_and_pixel_accuracy_match_a_hand_count():
    true = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    # class 0: hit 1, true 2, predicted 2 -> 1/3; class 1: hit 2, true 2, predicted 3 -> 2/3;
    # class 2: hit 1, true 2, predicted 1 -> 1/2. Class 3 appears nowhere and is left out of the mean.
    t = segmentation.Segmentation(num_classes=4)
    metrics = t.compute(sums_of(t, [(scores(pred, 4), (None, true))]))
    assert metrics["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics["pixel_acc"] == pytest.approx(4 / 6)
    expected_loss = torch.nn.functional.cross_entropy(scores(pred, 4), true).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert math.isnan(segmentation.mean_iou(torch.zeros(3, 3)))


def test_sums_add_over_batches():
    t = segmentation.Segmentation(num_classes=4)
    g = torch.Generator().manual_seed(0)
    output, true = torch.randn(6, 4, 5, 7, generator=g), torch.randint(0, 4, (6, 5, 7), generator=g)
    whole = t.compute(sums_of(t, [(output, (None, true))]))
    halves = t.compute(sums_of(t, [(output[:2], (None, true[:2])), (output[2:], (None, true[2:]))]))
    for key in t.metrics:
        assert halves[key] == pytest.approx(whole[key], rel=1e-6)


def test_check_names_the_shapes():
    t = segmentation.Segmentation(num_classes=4)
    true = torch.zeros(2, 8, 8, dtype=torch.long)
    t.check(torch.zeros(2, 4, 8, 8), (None, true))
    with pytest.raises(TaskError, match=r"integer class masks.*float32 \[2, 8, 8\]"):
        t.check(torch.zeros(2, 4, 8, 8), (None, true.float()))
    with pytest.raises(TaskError, match=r"integer class masks.*int64 \[2\]"):
        t.check(torch.zeros(2, 4), (None, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(TaskError, match=r"\[2, 4, 8, 8\] for masks \[2, 8, 8\], got \[2, 4\]"):
        t.check(torch.zeros(2, 4), (None, true))
    with pytest.raises(TaskError, match=r"got \[2, 3, 8, 8\]"):
        t.check(torch.zeros(2, 3, 8, 8), (None, true))
    with pytest.raises(TaskError, match=r"from 0 to 4, outside 0..3"):
        t.check_targets(torch.tensor([0, 4]))


def test_shapes_are_seeded_shaped_and_hold_every_class():
    a, b = shapes.shapes(seed=0, **SHAPES_KW), shapes.shapes(seed=0, **SHAPES_KW)
    other = shapes.shapes(seed=1, **SHAPES_KW)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], other.train.tensors[0])
    x, mask = a.train.tensors
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert mask.shape == (6, 16, 16) and mask.dtype == torch.long
    assert (len(a.val), len(a.test)) == (3, 3)
    big, masks = shapes.render_shapes(64, 16, 3, torch.Generator().manual_seed(0))
    assert set(masks.unique().tolist()) == {0, 1, 2, 3}
    assert big.min() >= 0 and big.max() <= 1
    # Every image holds at least one shape, and shape pixels are the bright ones (colours >= 0.55).
    assert (masks.flatten(1) > 0).any(dim=1).all()
    with pytest.raises(shapes.DatasetError, match="image_size"):
        shapes.shapes(seed=0, **{**SHAPES_KW, "image_size": 4})


@pytest.mark.parametrize(("height", "width"), [(16, 16), (13, 22)])
def test_unet_gives_one_score_map_a_class_at_the_input_size(height, width):
    model = unet.UNet(in_channels=3, num_classes=4, width=4, depth=2)
    assert model(torch.randn(2, 3, height, width)).shape == (2, 4, height, width)


def test_log_pictures_shows_image_true_and_predicted_side_by_side(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from tests.helpers import event_accumulator

    data = shapes.shapes(seed=0, **SHAPES_KW)
    t = segmentation.Segmentation(num_classes=4, mean=[0.3] * 3, std=[0.3] * 3, num_pictures=2)
    model = unet.UNet(3, 4, width=4, depth=2).eval()
    writer = SummaryWriter(tmp_path / "tb")
    with torch.no_grad():
        t.log_pictures(writer, {}, model, data.val.tensors, step=5)
    writer.close()
    (image,) = event_accumulator(tmp_path).Images("val/image_true_predicted")
    # 16 px tiles enlarged 4x: 2 rows and 3 columns of tiles, 2 px (8 px enlarged) apart.
    assert (image.step, image.height, image.width) == (5, 4 * (2 * 18 + 2), 4 * (3 * 18 + 2))
    canvas = segmentation.mask_rows(*data.val.tensors, data.val.tensors[1], num_classes=4, min_size=16)
    assert canvas.dtype == torch.uint8
    # The true and "predicted" tiles of sample 0 are the same masks, coloured alike.
    assert torch.equal(canvas[:, 2:18, 20:36], canvas[:, 2:18, 38:54])
