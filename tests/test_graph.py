"""Graph logging: it never changes training, survives untraceable models, and warns once."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from board.writer import log_graph_once
from tests.helpers import FAST, REFERENCE_RUN, event_accumulator, needs, train_in_process


def final_weights(run_dir):
    from store.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@needs("conf/model/simple_cnn.yaml")
def test_graph_on_and_off_give_bit_identical_weights(tmp_path):
    # Dropout in the model: any RNG draw by the tracer would change every later mask.
    common = [*FAST, "model=simple_cnn", "trainer.limit_batches=6", "model.dropout=0.3"]
    train_in_process([*common, "logging.graph=true"], tmp_path / "on")
    train_in_process([*common, "logging.graph=false"], tmp_path / "off")
    on, off = final_weights(tmp_path / "on"), final_weights(tmp_path / "off")
    assert on.keys() == off.keys()
    for key in on:
        assert torch.equal(on[key], off[key]), key
    assert event_accumulator(tmp_path / "on").Tags()["graph"]
    assert not event_accumulator(tmp_path / "off").Tags()["graph"]


class FrozenNormNet(nn.Module):
    """A submodule deliberately kept in eval mode, as when fine-tuning with frozen BatchNorm."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 2)
        self.norm.eval()

    def forward(self, x):
        # Draws from the RNG in the forward pass, as noise injection or stochastic depth do.
        return self.head(self.drop(self.norm(x) + torch.rand_like(x)))


def test_tracing_keeps_submodule_modes_and_the_rng_stream(tmp_path):
    model = FrozenNormNet().train()
    model.norm.eval()
    stats_before = model.norm.running_mean.clone()
    example = torch.randn(2, 4)
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    with SummaryWriter(tmp_path) as writer:
        assert log_graph_once(writer, model, example)
    assert torch.equal(torch.rand(3), expected_next), "the trace drew from the training RNG stream"
    assert model.training and model.drop.training and model.head.training
    assert not model.norm.training, "add_graph's recursive train() flipped a frozen submodule"
    assert torch.equal(model.norm.running_mean, stats_before)


@dataclass
class Output:
    logits: torch.Tensor
    features: torch.Tensor


class DataclassOutputNet(nn.Module):
    def __init__(self, input_shape: list[int], num_outputs: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 32), nn.ReLU())
        self.head = nn.Linear(32, num_outputs)

    def forward(self, x):
        features = self.body(x)
        return Output(logits=self.head(features), features=features)


class Untraceable(DataclassOutputNet):
    """Data-dependent control flow and an output the tracer cannot hold (a plain object)."""

    def forward(self, x):
        out = super().forward(x)
        if out.logits.sum() > 0:  # data-dependent branch: the tracer warns
            out.logits = out.logits * 1.0

        class Box:  # neither tensor, tuple, dict nor dataclass
            pass

        box = Box()
        box.logits = out.logits
        return box


@REFERENCE_RUN  # the MLP config of the default run, with a model class of its own
def test_dataclass_outputs_are_traced_through_a_tuple(tmp_path, caplog):
    target = f"{__name__}.DataclassOutputNet"
    overrides = [*FAST, "model=mlp", f"model._target_={target}", "~model.hidden_dims", "~model.dropout"]
    with caplog.at_level(logging.INFO):
        train_in_process([*overrides, "logging.graph=true"], tmp_path / "run")
    assert event_accumulator(tmp_path / "run").Tags()["graph"]
    assert "Graph of DataclassOutputNet logged" in caplog.text


@REFERENCE_RUN
def test_an_untraceable_model_trains_with_one_warning(tmp_path, caplog, capsys):
    target = f"{__name__}.Untraceable"
    overrides = [*FAST, "model=mlp", f"model._target_={target}", "~model.hidden_dims", "~model.dropout",
                 "logging.graph=true"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        best = train_in_process(overrides, tmp_path / "run")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Graph not logged: Untraceable cannot be traced" in warnings[0].getMessage()
    assert "tracer warnings" in warnings[0].getMessage()
    assert "Error occurs, No graph saved" not in capsys.readouterr().out
    assert best >= 0 and (tmp_path / "run" / "metrics.json").exists()
    assert not event_accumulator(tmp_path / "run").Tags()["graph"]
