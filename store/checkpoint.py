"""Checkpoints: the one owner of their format, written so that they survive a kill mid-write, read without
running pickled code.

A checkpoint is the parts' state dicts (loop/state.py SAVED_PARTS), the loop's TrainState fields, the RNG
streams, the data order, the run's config and FORMAT_VERSION; `checkpoint_of` writes that dict. Every
reader goes through `read_checkpoint`, which checks what a file could get wrong and returns a `Checkpoint`:
a typed view (position, config, the weights to evaluate, ...), so that no other module reads a key.
`restore` puts one back into freshly built parts, checking its position against the run's plan. A
checkpoint holds plain containers and tensors only, so `torch.load(weights_only=True)` reads it; a file
carrying any other pickled object is refused before anything in it runs. Where a run keeps its
checkpoints is system/layout.py's.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loop.state import SAVED_PARTS, StateError, TrainState
from store.rng import rng_state, set_rng_state
from system.errors import UserError
from system.files import atomic_file, fsync_dir, out_of_space, space_left
from system.layout import RunDir


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, foreign or unsafe; the message names the file."""


# The format this code writes. A file without the key is of format 1 (the same keys, before the version was
# stored). A newer format is refused: an older template cannot know what it would leave out.
FORMAT_VERSION = 1
FORMAT_KEY = "format_version"
MODEL = "model"  # the one key every checkpoint has: the model's own weights (SAVED_PARTS' first)
EMA = "ema"  # TrainState.ema's state_dict(): the weights' moving average (its module's, prefixed "module.")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as `read_checkpoint` returns it: checked, typed, not to be changed. A field that an older
    format lacks has its default. Its config is the stored dict, still inert: setup/trust.py decides
    what it may build (`stored_config`)."""

    path: Path
    format_version: int
    config: dict | None  # the run's resolved config as it was saved
    step: int  # optimizer steps taken
    epoch: int  # where a resume goes on: this epoch, after its first batch_in_epoch batches
    batch_in_epoch: int
    best: float | None  # the best value of the monitored metric so far
    monitor: str | None  # the task's monitored metric and its mode (min, max) when it was saved
    mode: str | None
    data_order: dict | None  # data_order_state() at the save; check_data_order compares it
    _weights: dict | None = field(repr=False)  # the model's own state_dict(); None: sharded, read when asked
    _saved: dict = field(repr=False)  # all of it, for restore() here
    world_size: int | None = None  # the ranks that trained it (None: an older checkpoint, not recorded)
    sharded: bool = False  # a directory of shards (store/sharded.py), its model and optimizer in them

    @property
    def model_weights(self) -> dict:
        """The model's own state_dict(); a sharded checkpoint's is consolidated on this process, once."""
        if self._weights is None:
            from store.sharded import consolidated

            object.__setattr__(self, "_weights", consolidated(self.path))
        return self._weights

    @property
    def evaluated_weights(self) -> dict:
        """The model weights that its run evaluated (validation, the test, eval.py): the moving average of
        the weights when the run kept one, else the model's own."""
        ema = self._saved.get(EMA)
        if not ema:
            return self.model_weights
        return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """The checkpoint at `path`, read and checked (`load_checkpoint`), as a Checkpoint: what every reader
    (eval.py, resume=, load_trained, init_from=, the final test) gets. Raises CheckpointError, one line."""
    sharded = Path(path).is_dir()
    if sharded:  # trainer.strategy=fsdp's: its state.pt now, its weights' shards when they are asked for
        from store.sharded import read_state

        saved = read_state(Path(path))
    else:
        saved = load_checkpoint(path, map_location)
    best = saved.get("best")
    return Checkpoint(
        path=Path(path),
        format_version=saved.get(FORMAT_KEY, 1),
        config=saved.get("config"),
        step=saved.get("step", 0),
        epoch=saved.get("epoch", 0),
        batch_in_epoch=saved.get("batch_in_epoch", 0),
        best=None if best is None else float(best),
        monitor=_text(saved.get("monitor")),
        mode=_text(saved.get("mode")),
        data_order=saved.get("data_order"),
        _weights=None if sharded else saved[MODEL],
        _saved=saved,
        world_size=saved.get("world_size"),
        sharded=sharded,
    )


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def checkpoint_of(parts, state, leave_out: tuple[str, ...] = ()) -> dict:
    """Everything a resume needs to go on exactly, as tensors and plain containers (weights_only).
    `leave_out`: parts saved elsewhere (a sharded checkpoint's model and optimizer); the model's entry is
    then empty, as every checkpoint has one."""
    from omegaconf import OmegaConf

    from setup.trust import literal

    return {
        FORMAT_KEY: FORMAT_VERSION,
        **{name: part.state_dict() for name, part in parts.saved_parts().items() if name not in leave_out},
        **({MODEL: {}} if MODEL in leave_out else {}),
        **state.state_dict(),
        "monitor": parts.task.monitor,
        "mode": parts.task.mode,
        "rng": rng_state(),
        "world_size": parts.ddp.world_size,  # a resume at another keeps the global batch (store/resume.py)
        "data_order": data_order_state(parts.loaders.train, state.epoch, state.batch_in_epoch),
        # Resolved, and escaped as text: data found in a user's file (a class named `${x}`) reads back as it was.
        "config": literal(OmegaConf.to_container(parts.cfg, resolve=True)),
    }


def restore(parts, state, ckpt: Checkpoint) -> None:
    """Load a checkpoint into freshly built parts and state, and set the RNG streams: call it after
    everything that draws random numbers at set-up (model init), right before the loop."""
    loaded = _load_model(parts, ckpt, with_optimizer=True)  # the model's, and a sharded optimizer's
    with _refused(ckpt.path, "resumed"):
        for name, part in parts.saved_parts().items():
            if name not in loaded:
                part.load_state_dict(ckpt._saved[name])
        state.load_state_dict(ckpt._saved)
        check_position(state, parts.plan)
        check_schedule_length(parts.scheduler, parts.plan.total_steps)
        set_rng_state(ckpt._saved["rng"])


def restore_evaluated(parts, ckpt: Checkpoint) -> TrainState:
    """What a checkpoint evaluates: its model weights into parts.model, and a fresh state holding its
    fields (its moving average of the weights, which TrainState.evaluated_model then picks). The optimizer,
    the schedule and the RNG streams stay as they are."""
    _load_model(parts, ckpt, with_optimizer=False)
    state = TrainState.new(parts)
    with _refused(ckpt.path, "evaluated"):
        state.load_state_dict(ckpt._saved)
    return state


def _load_model(parts, ckpt: Checkpoint, with_optimizer: bool) -> tuple[str, ...]:
    """A checkpoint's model (a sharded one's optimizer too) into parts.model; the parts loaded. DCP is imported
    only for a sharded checkpoint or model: it costs every other run's start-up a second."""
    from setup.distributed import is_fsdp

    if ckpt.sharded or is_fsdp(parts.model):
        from store.sharded import load_model

        return load_model(parts, ckpt, with_optimizer)
    load_weights(parts.model, ckpt.model_weights, ckpt.path)
    return ("model",)


@contextlib.contextmanager
def _refused(path, what: str):
    """A part that does not take its saved state back: one CheckpointError line naming the file."""
    try:
        yield
    except (CheckpointError, StateError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
        what_went = err if isinstance(err, (CheckpointError, StateError)) else f"{type(err).__name__}: {err}"
        first = (str(what_went).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} cannot be {what}: {first}") from None


def check_schedule_length(scheduler, total_steps: int) -> None:
    """A schedule that stores its own length (OneCycleLR) cannot be stretched by a resume with more steps."""
    from setup.config import ConfigError

    stored = getattr(scheduler, "total_steps", None)
    if stored is not None and stored != total_steps:
        raise ConfigError(
            f"the schedule {type(scheduler).__name__} was built for {stored} steps and cannot be resumed for "
            f"{total_steps}; resume with the run's own length"
        )


def check_position(state, plan) -> None:
    """A position the loop can go on from: inside the run's epochs, and no more steps than its batches."""
    if state.batch_in_epoch > plan.batches_per_epoch:
        raise CheckpointError(
            f"its batch_in_epoch {state.batch_in_epoch} is past the epoch's {plan.batches_per_epoch} batches"
        )
    most = state.epoch * plan.steps_per_epoch + math.ceil(
        state.batch_in_epoch * plan.steps_per_epoch / max(plan.batches_per_epoch, 1)
    )
    if state.step > most:
        raise CheckpointError(
            f"its step {state.step} is more than epoch {state.epoch} batch {state.batch_in_epoch} can have "
            f"taken ({most})"
        )


def data_order_state(loader, epoch: int, batch: int) -> dict:
    """The data order at this point: the (seed, epoch) permutation that setup/loaders.py draws, the batch
    reached in it, and its first indices, by which a resume checks that the order is still the same."""
    from setup.loaders import epoch_order

    sampler = getattr(loader, "sampler", loader)
    n = len(loader.dataset)
    head = epoch_order(n, sampler.seed, epoch, sampler.shuffle)[:16].clone()
    return {"seed": sampler.seed, "epoch": epoch, "batch": batch, "num_samples": n, "head": head}


def check_data_order(ckpt: Checkpoint, loader) -> None:
    """The data order the checkpoint saved must be the loader's still (same samples, same permutation), or
    a resume would not be exact. An older checkpoint without one is taken as it is."""
    from system.errors import one_line

    saved = ckpt.data_order
    if saved is None:
        return
    try:
        now = data_order_state(loader, int(saved["epoch"]), int(saved["batch"]))
        same = now["num_samples"] == saved["num_samples"] and torch.equal(now["head"], saved["head"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: its data_order is malformed ({one_line(err)})"
        ) from None
    if not same:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: the training data changed since it was saved ({saved['num_samples']} "
            f"samples then, {now['num_samples']} now, or another order); resuming would not be exact"
        )


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write whole or not at all (system/files.py): a reader or a crash sees the old file or the new one."""
    path = Path(path)
    try:
        with atomic_file(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as err:
        if not out_of_space(err):
            raise
        kept = "the previous one is intact" if path.exists() else "there was none before"
        raise CheckpointError(
            f"no space left to write {path.name} in {path.parent} ({space_left(path.parent)}); {kept}"
        ) from None


def link_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make `dst` a second name of the finished checkpoint `src`, atomically: hard-link under a temp name,
    then os.replace. No second copy is written; where hard links are not supported, it is copied."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def prune_step_checkpoints(run: RunDir, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (RunDir.step_checkpoints) of a run; None keeps them
    all. Returns what was deleted. best.pt and last.pt are never among them."""
    if keep is None:
        return []
    old = run.step_checkpoints()[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def load_weights(model: torch.nn.Module, weights: dict, path: str | os.PathLike) -> None:
    """model.load_state_dict(weights), but a checkpoint of another architecture (a different model config,
    an edited model file) fails in one line that names the file and the first differences."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        summary = "; ".join(details)[:300] or str(err).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} does not fit this {type(model).__name__} (was it saved with another model "
            f"config?): {summary}"
        ) from None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint at `path` as the dict it stores, read with torch.load(weights_only=True) and checked
    field by field (`check_fields`): a file that is damaged or crafted is one CheckpointError line, never a
    traceback or a hang. Code reads it through `read_checkpoint`; the dict is for this module, and for tests
    that forge a file from a real one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "unsupported global" in str(err).lower():  # a class or function to import: code, not data
            raise CheckpointError(
                f"checkpoint {path} holds pickled objects other than tensors and plain containers; "
                "refused unread (it may run code). Only load files you trust with weights_only=False."
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable or truncated, or not a checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or MODEL not in state:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this template (no 'model' entry)")
    version = state.get(FORMAT_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}, which this code does not read (it reads 1 to "
            f"{FORMAT_VERSION}); it was written by another version of the template"
        )
    check_fields(state, path)
    return state


# The most a checkpoint may hold outside its tensors: far above a large model's optimizer state (a few
# entries per parameter tensor), far below what would hang its reader. Shared parts count each time they
# are reached: pickle stores a list doubled 40 times in a few hundred KB, a reader walks 2^40 items.
MAX_NODES = 2_000_000
MAX_DEPTH = 32
# The counters' bound: no run takes 10^12 steps; TensorBoard's step is an int64 and JSON's numbers are exact
# to 2^53 only.
MAX_COUNT = 10**12
COUNTERS = ("step", "epoch", "batch_in_epoch", "nonfinite_skipped", "world_size")
STATE_DICTS = (*SAVED_PARTS, EMA)  # each the state_dict() of an object: a dict (ema: or None)


def check_fields(state: dict, path) -> None:
    """Every field a reader takes from a checkpoint, checked once for all of them: a bounded tree, its
    counters whole numbers from 0 to MAX_COUNT (not bools), its state dicts dicts with text keys, its
    config plain data (setup/trust.py checks what it may build). A field an older format lacks stays
    absent; its readers keep their defaults."""
    stack, nodes = [(state, 0)], 0
    while stack:  # tensors are leaves; only the containers around them could explode
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            too = f"nested more than {MAX_DEPTH} levels deep" if depth > MAX_DEPTH else (
                f"more than {MAX_NODES:,} values")  # fmt: skip
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed or evaluated: it is {too} outside its tensors (damaged "
                "or crafted); refused unread"
            )
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in (*node.keys(), *node.values()))
        elif isinstance(node, (list, tuple)):
            stack.extend((child, depth + 1) for child in node)
    for name in COUNTERS:
        value = state.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed or evaluated: its {name} is {_short(value)}, not a whole "
                f"number >= 0 (at most {MAX_COUNT:,})"
            )
    for name in STATE_DICTS:
        value = state.get(name)
        if value is None and name != MODEL:
            continue
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed or evaluated: its {name} is {_short(value)}, not a state "
                "dict (a dict of named tensors)"
            )
    best = state.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise CheckpointError(
            f"checkpoint {path} cannot be resumed or evaluated: its best is {_short(best)}, not a number"
        )
    config = state.get("config")
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(
            f"checkpoint {path} cannot be resumed or evaluated: its config is {_short(config)}, not a mapping"
        )


def _short(value) -> str:
    text = repr(value) if isinstance(value, (bool, int, float, str)) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."
