"""The regression task's metric math (against numpy and scikit-learn), its sums, its checks, its picture
and reference, and the diabetes data. A fork that deletes the task or the data skips these."""

from __future__ import annotations

import numpy as np
import pytest
import torch

regression = pytest.importorskip("tasks.regression")
diabetes = pytest.importorskip("data.diabetes")

from tasks.base import TaskError  # noqa: E402

MEAN, STD = [150.0, -3.0], [80.0, 2.0]


def task(**kw):
    return regression.Regression(num_targets=2, target_mean=MEAN, target_std=STD, **kw)


def batch(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=g), torch.randn(n, 2, generator=g)
    output = y + 0.5 * torch.randn(n, 2, generator=g)
    return output, (x, y)


def sums_of(t, pieces):
    sums = t.init_metrics(torch.device("cpu"))
    for output, b in pieces:
        t.update(sums, output, b)
    return sums


def test_metrics_match_numpy_in_the_targets_own_units():
    from sklearn.metrics import r2_score

    t = task()
    output, b = batch()
    metrics = t.compute(sums_of(t, [(output, b)]))
    assert set(metrics) == set(t.metrics)
    true = b[1].double().numpy() * STD + MEAN
    pred = output.double().numpy() * STD + MEAN
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-6)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-6)
    assert metrics["r2"] == pytest.approx(r2_score(true, pred), rel=1e-6)
    # The loss is the train loss: MSE of the mapped targets.
    assert metrics["loss"] == pytest.approx(t.loss(output, b).item(), rel=1e-5)


def test_sums_add_over_batches():
    t = task()
    output, b = batch(n=40)
    halves = [(output[s], (b[0][s], b[1][s])) for s in (slice(0, 17), slice(17, None))]
    whole, split = t.compute(sums_of(t, [(output, b)])), t.compute(sums_of(t, halves))
    for key in t.metrics:
        assert split[key] == pytest.approx(whole[key], rel=1e-9)


def test_perfect_predictions_and_constant_targets():
    t = regression.Regression()
    y = torch.linspace(-1, 1, 8).view(8, 1)
    metrics = t.compute(sums_of(t, [(y.clone(), (y, y))]))
    assert metrics["rmse"] == 0 and metrics["mae"] == 0 and metrics["r2"] == 1
    flat = torch.ones(8, 1)
    assert np.isnan(t.compute(sums_of(t, [(y, (y, flat))]))["r2"])  # R^2 is undefined there


def test_check_names_the_shapes():
    t = task()
    output, (x, y) = batch(n=4)
    t.check(output, (x, y))
    with pytest.raises(TaskError, match=r"float targets.*int64 \[4\]"):
        t.check(output, (x, torch.zeros(4, dtype=torch.long)))
    with pytest.raises(TaskError, match=r"num_targets=2.*float32 \[4, 3\]"):
        t.check(output, (x, torch.zeros(4, 3)))
    with pytest.raises(TaskError, match=r"shaped like the targets \[4, 2\], got \[4, 10\]"):
        t.check(torch.zeros(4, 10), (x, y))
    with pytest.raises(TaskError, match="NaN"):
        t.check_targets(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(TaskError, match="not one of"):
        regression.Regression(monitor="acc")


def test_reference_is_least_squares_on_train_scored_on_test():
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    splits = diabetes.diabetes(0.15, 0.15, 3, 152.0, 77.0)
    ref = regression.Regression().reference(splits)
    (xtr, ytr), (xte, yte) = splits.train.tensors, splits.test.tensors
    fit = LinearRegression().fit(xtr.double().numpy(), ytr.double().numpy())
    expected = r2_score(yte.double().numpy(), fit.predict(xte.double().numpy()))
    assert ref == {"test_r2_least_squares": pytest.approx(expected, abs=1e-6)}


def test_diabetes_splits_are_seeded_standardized_and_shaped():
    a, b = diabetes.diabetes(0.15, 0.15, 0, 152.0, 77.0), diabetes.diabetes(0.15, 0.15, 0, 152.0, 77.0)
    other = diabetes.diabetes(0.15, 0.15, 1, 152.0, 77.0)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.test.tensors[1], other.test.tensors[1])
    x, y = a.train.tensors
    assert x.dtype == y.dtype == torch.float32 and x.shape[1] == 10 and y.shape[1] == 1
    assert len(a.train) + len(a.val) + len(a.test) == 442 and len(a.val) == len(a.test) == 66
    # Standardized with the train split's statistics; the target mapped with the fixed constants.
    assert x.mean(dim=0).abs().max() < 1e-5 and (x.std(dim=0) - 1).abs().max() < 1e-5
    all_targets = torch.cat([s.tensors[1] for s in (a.train, a.val, a.test)]) * 77.0 + 152.0
    assert all_targets.min().item() == pytest.approx(25.0) and all_targets.max().item() == pytest.approx(
        346.0
    )
    # The three splits are disjoint: every patient once (the targets' multiset is the whole table's).
    from sklearn.datasets import load_diabetes

    expected = torch.tensor(sorted(load_diabetes().target), dtype=torch.float32)
    assert torch.allclose(all_targets.flatten().sort().values, expected, atol=1e-3)


def test_scatter_image_puts_points_on_the_diagonal_scale():
    true = torch.tensor([0.0, 10.0])
    image = regression.scatter_image(true, true.clone(), size=64, margin=4)
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    orange = torch.tensor([255, 160, 40], dtype=torch.uint8)
    assert torch.equal(image[:, 63 - 4, 4], orange) and torch.equal(image[:, 4, 63 - 4], orange)
    assert torch.equal(image[:, 32, 63 - 32], torch.full((3,), 96, dtype=torch.uint8))  # the diagonal


def test_log_pictures_writes_the_scatter(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from models.mlp import MLP
    from tests.helpers import event_accumulator

    t = task()
    model = MLP([5], 2, [8]).eval()
    writer = SummaryWriter(tmp_path / "tb")
    with torch.no_grad():
        t.log_pictures(writer, {}, model, batch()[1], step=3)
    writer.close()
    images = event_accumulator(tmp_path).Images("val/predicted_vs_true")
    assert [(e.step, e.width, e.height) for e in images] == [(3, 256, 256)]


def test_diabetes_experiment_reaches_the_least_squares_reference(tmp_path):
    """The quality target of the shipped experiment, for real (seconds): test R^2 of the MLP at least the
    closed-form least-squares fit's on the same split, minus 0.03."""
    from tests.helpers import options, read_metrics, train_in_process

    if "diabetes_regression" not in options("experiment"):
        pytest.skip("this fork has no diabetes_regression experiment")
    train_in_process(["experiment=diabetes_regression", "logging.progress_bar=false"], tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["monitor"] == "val/rmse" and metrics["mode"] == "min"
    reference = metrics["reference/test_r2_least_squares"]
    assert metrics["test/r2"] >= reference - 0.03, metrics
