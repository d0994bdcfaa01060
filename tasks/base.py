"""What a task is: everything about *what* is learned, so that train.py only knows *how* to train.

A task owns the loss, the metrics, which metric decides best.pt (`monitor`, `mode`), what one batch counts
for throughput, its own TensorBoard pictures and the graph's example input. The loop calls the methods
below and names no loss, no accuracy and no class. A new task is one file in tasks/ and one
conf/task/<name>.yaml whose keys are its constructor's parameters.

Batches are whatever the dataset yields ((inputs, targets) tuples, dicts, a tensor of tokens, lists of
box dicts), moved to the device as they are. A split's metrics live on the device, fed each batch by
`update` with no host sync: tensors that add up over batches (the loop sums them over DDP ranks once) and
torchmetrics metrics for what is more than a sum (AUROC, mAP; torchmetrics syncs them over the ranks).
`compute` turns them into numbers once per split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from system.errors import UserError  # torch-free, one file: copy it along with tasks/ (its docstring)


class TaskError(UserError, ValueError):
    """The task does not fit the data or the model; the message names the shapes."""


def require(ok: bool, message: str) -> None:
    """Raise TaskError(message) unless ok: the tasks' checks read as a list of rules, one call each."""
    if not ok:
        raise TaskError(message)


def describe(value) -> str:
    """What an error message shows of a value: 'int64 [8, 3]' for a tensor, else its type's name."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    return f"{str(value.dtype).replace('torch.', '')} {list(value.shape)}"


def check_ids(ids: torch.Tensor, count: int, what: str, setting: str, not_integer: str) -> None:
    """Raise TaskError unless `ids` (class labels, mask classes, token ids) are integers in [0, count), the
    range cross-entropy accepts: with the message `not_integer` for floats, else with the range found and
    the setting that sets `count`."""
    require(not ids.is_floating_point(), not_integer)
    low, high = int(ids.min()), int(ids.max())
    require(
        low >= 0 and high < count,
        f"{what} run from {low} to {high}, outside 0..{count - 1} ({setting}={count})",
    )


def collection(device: torch.device, **metrics):
    """A torchmetrics MetricCollection of these metrics, on the device; the task updates each one itself
    (compute_groups=False: no state shared behind its back)."""
    from torchmetrics import MetricCollection

    return MetricCollection(metrics, compute_groups=False).to(device)


def mean_metric():
    """A (weighted) mean over a split, for a loss: `update(values)` or `update(values, weights)`, e.g. a
    loss per token with the padding mask as its weights. Two sums, no host sync (tasks/weighted_mean.py)."""
    from tasks.weighted_mean import WeightedMean

    return WeightedMean()


@dataclass
class Predicting:
    """What predict.py tells a task's `predict` beside the inputs: the data's class names (a CSV's labels,
    imagefolder's folders; None: the classes are their indices), the longest input the model reads, and
    how a generative task draws (language modeling)."""

    class_names: list[str] | None = None
    context: int | None = None
    max_new_tokens: int = 200
    temperature: float = 0.8
    seed: int = 0


def output_tensor(output) -> torch.Tensor:
    """Models return a tensor, or a dict / object with a `logits` entry (as Hugging Face models do)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


def first_rows(value, n: int):
    """`value` with every tensor in it (in tuples, lists and dicts, at any depth) cut to its first n rows."""
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, dict):
        return {k: first_rows(v, n) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(first_rows(v, n) for v in value)
    return value


class Task:
    # The metrics `compute` returns; `monitor` must be one of them.
    metrics: tuple[str, ...] = ("loss",)
    # What `count` counts, for the throughput scalar: train/samples_per_s or train/tokens_per_s.
    unit: str = "samples"
    # Whether `update` can read what the model returns in train mode, for train/<metric> at each log line
    # (a model that returns its own losses in train mode, as torchvision's detectors do, cannot).
    train_metrics: bool = True

    def __init__(self, monitor: str = "loss", mode: str = "min") -> None:
        require(
            monitor in self.metrics,
            f"task.monitor={monitor!r} is not one of this task's metrics: {', '.join(self.metrics)}",
        )
        require(mode in ("min", "max"), f"task.mode={mode!r} must be min or max")
        self.monitor, self.mode = monitor, mode

    def better(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        """Whether `value` of the monitored metric beats `best` (None: nothing yet) by more than min_delta."""
        if best is None or best != best:  # NaN best: anything finite is better
            return value == value
        return value < best - min_delta if self.mode == "min" else value > best + min_delta

    # --- the batch --------------------------------------------------------------------------------------
    def inputs(self, batch):
        """What the model is called with."""
        return batch[0]

    def targets(self, batch):
        return batch[1]

    def count(self, batch) -> int:
        """Samples (or tokens, pixels) in this batch, read from shapes: no device sync."""
        return int(self.targets(batch).shape[0])

    def example_input(self, batch):
        """The graph's example: the model's input for two samples (a tensor, or a tuple, list or dict of
        them, each cut to its first two rows)."""
        return first_rows(self.inputs(batch), 2)

    def images(self, batch) -> torch.Tensor | None:
        """Input images to show in TensorBoard at the first step ([N, C, H, W] float), or None."""
        x = self.inputs(batch)
        return x if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point() else None

    # --- training ---------------------------------------------------------------------------------------
    def forward(self, model, batch):
        return output_tensor(model(self.inputs(batch)))

    def loss(self, output, batch):
        """The mean loss of this batch: a scalar tensor, or a dict of named scalar tensors (their sum is
        backpropagated, and each is logged as train/<name>)."""
        raise NotImplementedError

    # --- evaluation -------------------------------------------------------------------------------------
    def init_metrics(self, device: torch.device):
        """Fresh metrics for one split, on the device, every rank the same: a dict of zeroed tensors that
        `update` adds to (sums, counts, a confusion matrix) and/or torchmetrics metrics (`MeanAveragePrecision`,
        `BinaryAUROC`; a `MetricCollection` of them). torchmetrics costs a run about half a second of
        imports (it imports torchvision): the shipped tasks use it only where a sum will not do."""
        return self.init_sums(device)  # the name this method had before torchmetrics came in

    def init_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} defines no init_metrics")

    def update(self, metrics, output, batch) -> None:
        """Feed this batch to `metrics`: add to the tensors, update the torchmetrics metrics (no .item(), no
        host sync)."""
        raise NotImplementedError

    def compute(self, metrics) -> dict[str, float]:
        """The numbers of a whole split, named as in `metrics`, once the loop has summed the tensors over the
        DDP ranks and computed the torchmetrics metrics (synced over the ranks; their compute() returns that
        result again). By default each name's torchmetrics metric as a number."""
        return {name: float(metrics[name].compute()) for name in self.metrics}

    # A metric that needs the train split too (a kNN monitor against the train embeddings, a linear probe):
    # set reads_train_split, and each evaluation first runs the train split through the model, in order and
    # in eval mode, calling update_train on each batch. Keep rows in a list in `metrics`
    # (metrics["train_embeddings"] = [] in init_metrics, then .append(rows)): before `compute` the loop
    # concatenates every list and gathers it from every DDP rank, so compute sees the whole split's rows.
    # The train metrics of a log line (train/<metric>) see that line's batches only: no train split rows
    # there, so compute leaves such a metric out when its list is empty.
    reads_train_split: bool = False

    def update_train(self, metrics, output, batch) -> None:
        """With reads_train_split: one train batch, in eval mode, before the evaluated split's batches."""
        raise NotImplementedError(f"{type(self).__name__} sets reads_train_split but defines no update_train")

    def log_pictures(self, writer, metrics, model, batch, step: int, prefix: str = "val") -> None:
        """Rank 0, after each validation: this task's own TensorBoard pictures (writer is never None here).
        `metrics` are the split's, computed; `batch` is the split's first batch, on the device; `model` is
        in eval mode, under no_grad."""

    def reference(self, splits) -> dict[str, float]:
        """Optional reference numbers for this data, computed once at the start from the splits and logged
        beside the run's own (metrics.json, TensorBoard `reference/<name>`), e.g. a closed-form baseline."""
        return {}

    # --- prediction (predict.py) -----------------------------------------------------------------------
    def predict(self, model, inputs, how: Predicting) -> list[dict]:
        """One row a sample of `inputs` (what `inputs(batch)` gives, on the device; a list of 1-D token
        tensors for tokens), in the data's own terms: numbers, text and lists go into the CSV or JSONL as
        they are; a 2-D integer tensor (a mask) is written as a PNG beside it. `model` is in eval mode,
        under no_grad."""
        raise TaskError(
            f"{type(self).__name__} cannot predict: add a `predict(self, model, inputs, how)` method to it "
            "that returns one dict of columns a sample (tasks/base.py, docs/predict.md)"
        )

    # --- before training --------------------------------------------------------------------------------
    def check(self, output: torch.Tensor, batch) -> None:
        """Raise TaskError (one line, with the shapes) if this model output and batch do not fit the task."""

    def check_batch(self, batch, name: str = "the batch") -> None:
        """Raise TaskError (one line naming the sample of `name` and the field) if this batch holds values
        that the model cannot learn from (detection: a box with x2 <= x1, a label outside the classes).
        Called on every batch as the loader made it, training (train.py) and evaluation
        (loop/evaluation.py), before it moves to the device, where reading its values costs no device sync:
        keep it to a few vectorized operations."""

    def check_targets(self, targets: torch.Tensor) -> None:
        """Raise TaskError if a whole split's targets (when the data holds them in memory) cannot work."""
