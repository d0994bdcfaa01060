"""A fork whose batch is a dict of two inputs and whose model returns a dict (tests/dict_fork/) is
first-class: the check before training, the tests' real batches and the graph at step 0 (logging.graph=true) take the
task's input as it is, a dict of tensors."""

from __future__ import annotations

import torch

from board.writer import log_graph_once
from tests.helpers import FAST, REPO, build_run, event_accumulator, read_metrics, train_in_process

CONF = REPO / "tests" / "dict_fork" / "conf"
FORK = [f"hydra.searchpath=[file://{CONF}]"]
PARTS = ("dict_classification", "two_inputs", "two_branch")


def test_a_dict_batch_trains_with_the_graph_logged_at_step_0(tmp_path):
    run = tmp_path / "run"
    train_in_process([*FAST, *FORK, *(f"{g}={n}" for g, n in zip(("task", "data", "model"), PARTS, strict=True)),
                      "logging.graph=true"], run)  # fmt: skip
    assert event_accumulator(run).Tags()["graph"]  # traced on the dict of both inputs
    assert 0 <= read_metrics(run)["test/acc"] <= 1


def test_the_graph_s_example_is_the_dict_cut_to_two_samples(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    built = build_run(*PARTS, tmp_path, [*FORK, "data.batch_size=5"], conf=CONF)
    batch = next(iter(built.loaders.val))
    assert isinstance(batch, dict) and set(batch) == {"image", "features", "label"}
    example = built.task.example_input(batch)
    assert {k: tuple(v.shape) for k, v in example.items()} == {"image": (2, 1, 8, 8), "features": (2, 4)}
    with SummaryWriter(tmp_path / "tb") as writer:
        assert log_graph_once(writer, built.model, example)
        assert not log_graph_once(
            writer, built.model, {"ids": [1, 2]}
        )  # no tensor in it: a warning, no error
    from tasks.base import Task

    assert torch.equal(Task().example_input((torch.arange(5), None)), torch.arange(2))  # a tensor as before
