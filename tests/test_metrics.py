"""The tasks' metrics are torchmetrics': binary classification against scikit-learn, and every task's numbers
(each task on disk, on real batches of its data) over two DDP ranks (gloo, two real processes, each its own
half of the split) equal to one process's."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from loop.evaluation import measure
from tests.helpers import build_run, first_combo_per_task, needs, options


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


# Each rank evaluates its shard (every other sample) of the first BATCHES * 2 * HALF samples of the split.
HALF, BATCHES = 3, 2


def binary_case():
    """Binary classification's own metrics (AUROC, F1), which no shipped data's untrained model reaches."""
    from tasks.classification import Classification

    g = torch.Generator().manual_seed(1)
    return Classification(2), torch.randn(12, 2, generator=g), (None, torch.randint(0, 2, (12,), generator=g))


def numbers(directory, rank: int = 0, world_size: int = 1) -> dict:
    """Each task on disk (conf/task/, a fork's too) with its first offline data and model, untrained, over
    the val split's first samples, as evaluation measures them on this rank of world_size (summed or synced
    over the ranks)."""
    from loop.evaluation import evaluate

    found = {}
    for task, data, model in first_combo_per_task():
        run = build_run(task, data, model, directory / task, [f"data.batch_size={HALF * (3 - world_size)}"],
                        rank, world_size)  # fmt: skip
        found[task] = evaluate(  # the train split too for a task that reads it (a kNN monitor), as the loop
            run.model, run.loaders.val, run.task, torch.device("cpu"), "32", limit=BATCHES,
            train=run.loaders.train_in_order,
        )[0]  # fmt: skip
    if "classification" in options("task"):
        task, output, batch = binary_case()
        rows = slice(rank, None, world_size)
        metrics = task.init_metrics(torch.device("cpu"))
        task.update(metrics, output[rows], (None, batch[1][rows]))
        found["binary"] = measure(task, metrics)
    return found


def _rank(rank: int, port: int, directory, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        queue.put((rank, numbers(directory, rank, 2)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_over_two_ranks_are_the_whole_splits(tmp_path):
    """Every task on disk, a fork's too (a kNN monitor gathering embeddings, a masked mean), on real batches
    of its data: two ranks each evaluating its half of the samples give the numbers of one process."""
    whole = numbers(tmp_path)
    assert {task for task, _, _ in first_combo_per_task()} <= set(whole)
    with socket.socket() as s:  # a free port for the two ranks to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, tmp_path, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        for name, expected in whole.items():
            assert results[rank][name] == pytest.approx(expected, rel=1e-5), (rank, name)
