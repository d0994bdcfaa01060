"""The loop's state, typed, in two objects: `Parts`, what set-up builds once, and `TrainState`, what changes
as the run trains and goes into every checkpoint.

A checkpoint is `TrainState.state_dict()` beside the state dicts of the parts named in SAVED_PARTS
(store/checkpoint.py writes and reads it, and is the one other place that knows its keys). A field of
TrainState is checkpointed and resumed by being there: a plain value as it is, an object through its
state_dict()/load_state_dict(). Scratch that only this process needs (the last checkpoint written, why the
loop stopped) is marked `field(metadata=NOT_SAVED)`. docs/loop.md shows how to add a field.

The loop's building blocks are what this module imports: store/ (a run's files) and life/ build
on it, never the other way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from loop.earlystop import EarlyStopping
from loop.nonfinite import LossWindow
from setup.config import LoggingSchema, TrainerSchema
from setup.distributed import Distributed
from setup.loaders import Loaders

NOT_SAVED = {"saved": False}
# The parts whose own state_dict() every checkpoint holds, under these names (attributes of Parts; the model
# first: its weights are what every reader of a checkpoint wants).
SAVED_PARTS = ("model", "optimizer", "scheduler", "scaler")


class StateError(ValueError):
    """A saved state that TrainState cannot take back (a counter that is no whole number, ...); a
    checkpoint's reader turns it into one CheckpointError line naming the file."""


@dataclass
class Plan:
    """How long the run is: batches per epoch, optimizer steps per epoch and in all, epochs."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    max_epochs: int

    @classmethod
    def of(cls, num_batches: int, t: TrainerSchema) -> Plan:
        batches = min(num_batches, t.limit_batches or math.inf)
        steps_per_epoch = math.ceil(batches / t.accumulate_grad_batches)
        total = t.max_steps or t.max_epochs * steps_per_epoch
        return cls(batches, steps_per_epoch, total, math.ceil(total / steps_per_epoch))


@dataclass
class Parts:
    """What set-up builds once and the loop uses as it is."""

    cfg: DictConfig
    trainer: TrainerSchema
    logging: LoggingSchema
    run_dir: Path
    ddp: Distributed
    task: Any  # tasks.base.Task
    loaders: Loaders
    plan: Plan
    model: torch.nn.Module  # the module itself: what a checkpoint's weights are
    eval_model: torch.nn.Module  # compiled when trainer.compile; evaluation runs outside DDP
    train_model: torch.nn.Module  # eval_model in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch.optim.lr_scheduler
    scaler: torch.amp.GradScaler
    autocast: Any  # the precision's autocast, made once and entered every step (a no-op at 32-bit)
    deadline: Any  # loop.timebudget.Deadline: trainer.max_time
    reference: dict[str, float]
    writer: Any = None  # TensorBoard's SummaryWriter, on rank 0 only

    @property
    def device(self) -> torch.device:
        return self.ddp.device

    @property
    def move_batches(self) -> bool:
        """On the CPU, without channels_last, a batch is where it belongs already."""
        return self.device.type != "cpu" or self.trainer.channels_last

    def saved_parts(self) -> dict[str, Any]:
        """The parts that every checkpoint holds the state_dict() of, by their names in it (SAVED_PARTS)."""
        return {name: getattr(self, name) for name in SAVED_PARTS}


@dataclass
class TrainState:
    """What changes as the run trains. Every field without NOT_SAVED is checkpointed and resumed."""

    early_stopping: EarlyStopping
    window: LossWindow  # the training losses of the current logging window, on the device
    epoch: int = 0  # where a resume goes on: this epoch, after its first `batch_in_epoch` batches
    batch_in_epoch: int = 0
    step: int = 0  # optimizer steps taken
    best: float | None = None  # the best value of the task's monitored metric so far
    val_last: dict | None = None  # the last validation's metrics
    nonfinite_skipped: int = 0  # batches dropped by trainer.skip_nonfinite
    ema: AveragedModel | None = None  # trainer.ema_decay: the weights' moving average, what is evaluated
    stop_reason: str | None = field(default=None, metadata=NOT_SAVED)  # signal, max_time, early_stopping
    last_good: Path | None = field(default=None, metadata=NOT_SAVED)  # the newest checkpoint written
    train_sample: tuple | None = field(default=None, metadata=NOT_SAVED)  # (output, batch) for train metrics

    @classmethod
    def new(cls, parts: Parts) -> TrainState:
        t, task = parts.trainer, parts.task
        es = t.early_stopping
        window = LossWindow(parts.logging.every_n_steps * t.accumulate_grad_batches, parts.device)
        state = cls(EarlyStopping(es.patience, es.min_delta, task.mode, f"val/{task.monitor}"), window)
        if t.ema_decay:  # a copy of the model (uncompiled, outside DDP): every rank averages equal weights
            state.ema = AveragedModel(
                parts.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True
            )
        return state

    def evaluated_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model that validation and the test evaluate: the moving average when there is one."""
        return model if self.ema is None else self.ema.module

    def state_dict(self) -> dict:
        return {f.name: _saved(getattr(self, f.name)) for f in _saved_fields(self)}

    def load_state_dict(self, saved: dict) -> None:
        """Take back a checkpoint's fields; a field it lacks (an older checkpoint) keeps its default. A
        position or counter that is not a whole number >= 0 raises StateError."""
        for f in _saved_fields(self):
            current = getattr(self, f.name)
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(saved.get(f.name))
            elif f.name in saved:
                setattr(self, f.name, _checked(f.name, saved[f.name], f.default))


def _saved_fields(state: TrainState):
    return [f for f in fields(state) if f.metadata.get("saved", True)]


def _saved(value):
    return value.state_dict() if hasattr(value, "state_dict") else value


def _checked(name: str, value, default):
    """A checkpoint is data from a file: its counters must be what the loop can go on from."""
    counter = isinstance(default, int) and not isinstance(default, bool)
    if counter and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise StateError(f"its {name} is {value!r}, not a whole number >= 0")
    if name == "best" and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StateError(f"its best is {value!r}, not a number")
        value = float(value)
    if name == "val_last" and value is not None and not isinstance(value, dict):
        raise StateError(f"its val_last is {type(value).__name__}, not a dict of metrics")
    return value
