"""TensorBoard logging: the event writer, and the model graph traced once at the first training step."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from collections.abc import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)


def open_writer(logdir: str, enabled: bool = True, purge_step: int | None = None):
    """A SummaryWriter on rank 0; None elsewhere, so callers write `if writer:` and nothing more.

    A resumed run passes purge_step (its checkpoint's step + 1): TensorBoard then hides the events at and
    after it that the interrupted run wrote past its checkpoint, so that no step shows twice."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    _quiet_when_out_of_space()
    return SummaryWriter(log_dir=str(logdir), purge_step=purge_step)


@contextlib.contextmanager
def writing(logdir, enabled: bool = True, purge_step: int | None = None):
    """The one owner of a SummaryWriter's life: open_writer's writer for the block, closed at its end
    (train.py holds it for the run's life through life/run.py, eval.py for its scalars). After an
    error it is closed quietly: a writer that cannot write (a full disk) is the error being told already."""
    writer = open_writer(logdir, enabled, purge_step)
    try:
        yield writer
    except BaseException:
        if writer:
            with contextlib.suppress(Exception):
                writer.close()
        raise
    if writer:
        writer.close()


def _quiet_when_out_of_space() -> None:
    """The writer's own thread writes the events; a full disk there would print a thread's traceback, then
    reach the main thread at the next flush, which tells it in one line (life/run.py). Only that
    error is kept quiet here; any other in any thread is reported as before."""
    import threading

    from system.files import out_of_space

    previous = threading.excepthook
    if getattr(previous, "quiet_out_of_space", False):
        return

    def hook(args) -> None:
        if not out_of_space(args.exc_value):
            previous(args)

    hook.quiet_out_of_space = True
    threading.excepthook = hook


def add_scalars(writer, values: Mapping[str, float], step: int, prefix: str = "") -> None:
    """Several scalars at one step as one event (tags `<prefix>/<key>`), the same as that many
    writer.add_scalar calls on the SCALARS tab. One event costs about as much as one add_scalar, and
    the loop logs four or more scalars at every logging step."""
    from torch.utils.tensorboard.summary import Summary

    tag = f"{prefix}/{{}}" if prefix else "{}"
    summary = Summary(
        value=[Summary.Value(tag=tag.format(k), simple_value=float(v)) for k, v in values.items()]
    )
    # SummaryWriter.add_scalar ends in the same call, one event per scalar.
    writer._get_file_writer().add_summary(summary, step)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class _TupleOutputs(nn.Module):
    """The tracer accepts only tensors and tuples of them as outputs; flatten dicts and dataclasses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return _flatten(self.model(x))


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return tuple(_flatten(v) for v in out.values())
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return tuple(_flatten(getattr(out, f.name)) for f in dataclasses.fields(out))
    if isinstance(out, (tuple, list)):
        return tuple(_flatten(v) for v in out)
    return out  # anything else: the tracer will refuse it and we warn once


@contextlib.contextmanager
def _training_flags_kept(model: nn.Module):
    """add_graph calls model.train(False) then model.train(True), and both recurse: a submodule that was
    deliberately in eval mode (a frozen BatchNorm, say) would come back in train mode. Put every flag back."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in a model input: itself, or those in its tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def log_graph_once(writer, model: nn.Module, example) -> bool:
    """Trace `model` on `example`, the model's input (a tensor, or a tuple, list or dict of tensors, which the
    model is called with as one argument, as the task calls it), into the GRAPHS tab. Never changes
    training, never raises.

    Returns whether the graph was written. The trace runs on the unwrapped model, outside autocast,
    without grad, with the RNG forked so that it draws nothing from the training stream.
    """
    if writer is None:
        return False
    model = unwrap(model)
    tensors = _tensors(example)
    if not tensors:
        log.warning("Graph not logged: the model's input holds no tensor (%s). Training continues.",
                    type(example).__name__)  # fmt: skip
        return False
    device = tensors[0].device
    # One argument, as the task passes it: add_graph would spread a tuple or list over several.
    args = example if isinstance(example, torch.Tensor) else (example,)
    with (
        _training_flags_kept(model),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.autocast(device.type, enabled=False),
        torch.no_grad(),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        error = None
        # Plain first, so node names are the model's own; the tuple wrapper only when outputs need it.
        for candidate in (model, _TupleOutputs(model)):
            try:
                # torch prints the tracer's error to stdout before raising it; we report it once, below.
                with contextlib.redirect_stdout(io.StringIO()):
                    writer.add_graph(candidate, args)
                error = None
                break
            except Exception as err:  # the tracer raises many types; none of them may stop training
                error = err
    tracer_warnings = sum(1 for w in caught if "Tracer" in w.category.__name__)
    note = f" ({tracer_warnings} tracer warnings: the graph may show one path of data-dependent code)"
    if error is not None:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.warning(
            "Graph not logged: %s cannot be traced (%s: %s)%s. Training continues.",
            type(model).__name__,
            type(error).__name__,
            first_line[:200],
            note if tracer_warnings else "",
        )
        return False
    writer.flush()  # so that the GRAPHS tab shows it while training goes on
    log.info("Graph of %s logged to TensorBoard%s.", type(model).__name__, note if tracer_warnings else "")
    return True
