"""The tasks' metrics are torchmetrics': binary classification against scikit-learn, and every task's numbers
over two DDP ranks (gloo, two real processes, each its own half of the split) equal to one process's."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from loop.evaluation import measure
from tests.helpers import needs, options


@needs("conf/task/classification.yaml")
def test_binary_classification_reports_auroc_and_f1_as_scikit_learn_does():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from tasks.classification import Classification

    task = Classification(num_classes=2, monitor="auroc")
    assert task.metrics == ("loss", "acc", "auroc", "f1")
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (101,), generator=g)
    logits = torch.randn(101, 2, generator=g) + torch.stack([-y, y], dim=1) * 0.8
    metrics = task.init_metrics(torch.device("cpu"))
    for rows in torch.arange(101).split(32):  # 32, 32, 32, 5: the metrics add up across batches
        task.update(metrics, logits[rows], (None, y[rows]))
    got = measure(task, metrics)
    score, pred = logits.softmax(1)[:, 1].numpy(), logits.argmax(1).numpy()
    assert got["auroc"] == pytest.approx(roc_auc_score(y.numpy(), score), abs=1e-6)
    assert got["f1"] == pytest.approx(f1_score(y.numpy(), pred), abs=1e-6)
    assert got["acc"] == pytest.approx(accuracy_score(y.numpy(), pred), abs=1e-9)
    assert "auroc" not in Classification(num_classes=3).metrics


def test_mean_metric_weighs_each_value_by_its_weight():
    """A masked loss (weights 0 on the padding) averages only what the weights keep; without weights it is
    the plain mean torchmetrics' MeanMetric gives, over batches of any size."""
    from torchmetrics import MeanMetric

    from tasks.base import mean_metric

    g = torch.Generator().manual_seed(2)
    values, mask = torch.rand(5, 7, generator=g), torch.rand(5, 7, generator=g) > 0.4
    weighted, plain, reference = mean_metric(), mean_metric(), MeanMetric()
    for rows in torch.arange(5).split(2):
        weighted.update(values[rows], mask[rows].float())
        plain.update(values[rows])
        reference.update(values[rows])
    assert float(weighted.compute()) == pytest.approx(float(values[mask].mean()), rel=1e-6)
    assert float(plain.compute()) == pytest.approx(float(reference.compute()), rel=1e-6)


def cases():
    """(name, task, model outputs, batch) for one split of each shipped task this checkout has (conf/task/
    on disk), 12 samples each."""
    shipped = set(options("task"))
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (12,), generator=g)
    if "classification" in shipped:
        from tasks.classification import Classification

        yield "binary", Classification(2), torch.randn(12, 2, generator=g), (None, y % 2)
        yield "multiclass", Classification(3), torch.randn(12, 3, generator=g), (None, y)
    if "regression" in shipped:
        from tasks.regression import Regression

        target = torch.randn(12, 2, generator=g)
        output = target + torch.randn(12, 2, generator=g)
        yield (
            "regression",
            Regression(2, target_mean=[5.0, -1.0], target_std=[2.0, 0.5]),
            output,
            (None, target),
        )
    if "segmentation" in shipped:
        from tasks.segmentation import Segmentation

        masks = torch.randint(0, 4, (12, 5, 6), generator=g)
        yield "segmentation", Segmentation(4), torch.randn(12, 4, 5, 6, generator=g), (None, masks)
    if "language_modeling" in shipped:
        from tasks.language_modeling import LanguageModeling

        tokens = torch.randint(0, 256, (12, 8), generator=g)
        yield "language_modeling", LanguageModeling(256), torch.randn(12, 7, 256, generator=g), (tokens,)


def half(batch, rank):
    return tuple(None if part is None else part[rank * 6 : rank * 6 + 6] for part in batch)


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        found = {}
        for name, task, output, batch in cases():
            metrics = task.init_metrics(torch.device("cpu"))
            task.update(metrics, output[rank * 6 : rank * 6 + 6], half(batch, rank))
            found[name] = measure(task, metrics)
        queue.put((rank, found))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_over_two_ranks_are_the_whole_splits():
    whole = {}
    for name, task, output, batch in cases():
        metrics = task.init_metrics(torch.device("cpu"))
        task.update(metrics, output, batch)
        whole[name] = measure(task, metrics)
    with socket.socket() as s:  # a free port for the two ranks to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        for name, numbers in whole.items():
            assert results[rank][name] == pytest.approx(numbers, rel=1e-5), (rank, name)
