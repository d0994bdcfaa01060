"""A metric that needs the train split (Task.reads_train_split, docs/tasks.md): a fork's kNN monitor sees
every train sample once, through the evaluated model, and gets the same number over two DDP ranks as in
one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import FAST, REFERENCE_RUN, read_metrics, train_in_process

KNN = ["task._target_=tests.knn_task.KnnClassification", "~task.confusion_matrix", "task.monitor=knn_acc"]


def digits_and_model():
    from data.digits import digits
    from models.mlp import MLP

    splits = digits(0.15, 0.15, 0, [0.3], [0.38])
    torch.manual_seed(0)
    return splits, MLP(input_shape=[1, 8, 8], num_outputs=10, hidden_dims=[32], dropout=0.0).eval()


def by_hand(model, splits, k: int = 5) -> float:
    from tests.knn_task import knn_accuracy

    with torch.no_grad():
        (x_train, y_train), (x_val, y_val) = splits.train.tensors, splits.val.tensors
        sums = {"bank": model(x_train), "bank_labels": y_train, "rows": model(x_val), "labels": y_val}
    return knn_accuracy(sums, k)


def evaluate_rank(rank: int, world: int, port: int, queue) -> None:
    from loop.evaluation import evaluate
    from setup.loaders import build_dataloaders
    from tests.knn_task import KnnClassification

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        splits, model = digits_and_model()
        loaders = build_dataloaders(splits, 32, 0, seed=0, pin_memory=False, rank=rank, world_size=world)
        numbers, _, _ = evaluate(model, loaders.val, KnnClassification(10), torch.device("cpu"), "32",
                                 train=loaders.train_in_order)  # fmt: skip
        queue.put((rank, numbers["knn_acc"]))
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.slow
@REFERENCE_RUN
def test_a_train_split_metric_is_the_whole_splits_in_one_process_and_over_two_ranks():
    import queue as queues

    splits, model = digits_and_model()
    want = by_hand(model, splits)
    one = queues.Queue()
    evaluate_rank(0, 1, 0, one)
    assert one.get()[1] == pytest.approx(want, abs=1e-9)
    with socket.socket() as s:  # a free port for the two ranks to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    found = ctx.Queue()
    procs = [ctx.Process(target=evaluate_rank, args=(r, 2, port, found)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(found.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == {0: pytest.approx(want, abs=1e-9), 1: pytest.approx(want, abs=1e-9)}


@REFERENCE_RUN
def test_a_run_monitors_a_train_split_metric(tmp_path):
    """The monitor can be such a metric: best.pt follows it, and the test split is measured against the
    train split of the tested weights."""
    run = tmp_path / "run"
    train_in_process([*FAST, *KNN, "trainer.max_epochs=2"], run)
    metrics = read_metrics(run)
    assert metrics["monitor"] == "val/knn_acc" and 0.0 <= metrics["test/knn_acc"] <= 1.0
    assert metrics["val/knn_acc_best"] == max(metrics["val/knn_acc_best"], metrics["val/knn_acc_last"])


@REFERENCE_RUN
def test_the_splits_batch_limit_bounds_the_train_split_too():
    """A quick check (`trainer.limit_val_batches=2`) reads two batches of the train split, not all of it."""
    from loop.evaluation import evaluate
    from setup.loaders import build_dataloaders
    from tests.knn_task import KnnClassification

    class Counting(KnnClassification):
        def update_train(self, sums, output, batch):
            super().update_train(sums, output, batch)
            self.train_rows = getattr(self, "train_rows", 0) + len(output)

    splits, model = digits_and_model()
    loaders = build_dataloaders(splits, 32, 0, seed=0, pin_memory=False)
    task = Counting(10)
    numbers, _, _ = evaluate(model, loaders.val, task, torch.device("cpu"), "32", limit=2,
                             train=loaders.train_in_order)  # fmt: skip
    assert task.train_rows == 64 and 0 <= numbers["knn_acc"] <= 1
