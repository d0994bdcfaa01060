"""Sharded checkpoints (trainer.strategy=fsdp under torchrun): each rank writes its own shards of the weights
and of the optimizer state with torch.distributed.checkpoint (DCP); read back at any world size (DCP
reshards), or consolidated on one process for eval.py, load_trained and init_from=.

    checkpoints/last.dcp -> .shards-00000012-3f2a9c/      a link, replaced atomically
        __0_0.distcp, __1_0.distcp, .metadata         DCP's files: {"model": ..., "optimizer": ...}
        state.pt                                       the rest of the checkpoint (store/checkpoint.py's
                                                       format, without model and optimizer), written last

Complete or absent: the shards go to a new hidden directory, state.pt follows once every rank's files are on
disk, and only then do the names (last.dcp, best.dcp, step_<N>.dcp) link to it; os.replace of a link is
atomic, so a kill -9 leaves the old checkpoint or the new one. Directories no name links to are removed at
the next save.

Trust: DCP stores its .metadata with pickle and reads non-tensor values with torch.load(weights_only=False).
Neither runs here: the metadata is read by an unpickler that builds DCP's own metadata classes and nothing
else (`_MetadataUnpickler`), and the values by torch.load(weights_only=True) (`_SafeLoadPlanner`).
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

from setup.distributed import barrier, is_distributed
from system.files import fsync_dir
from system.layout import RunDir

STATE = "state.pt"  # what is not sharded: the loop's state, the schedule, the RNG, the config
SHARDED_PARTS = ("model", "optimizer")

# The classes a DCP .metadata file is made of (torch 2.x): anything else in it is refused unread.
_DCP = "torch.distributed.checkpoint"
_ALLOWED = {
    *((f"{_DCP}.metadata", name) for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
      "ChunkStorageMetadata", "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a tensor's layout looked up by name among torch's layouts
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),  # where the checkpoint was written
}  # fmt: skip
# Each of these, called by the pickle (its REDUCE), builds a value and nothing else; a dtype is a name too.


class UnsafeMetadata(pickle.UnpicklingError):
    """A .metadata file that names something other than DCP's metadata classes."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = getattr(torch, name, None) if module == "torch" else None
        if (module, name) in _ALLOWED or isinstance(dtype, torch.dtype):
            return super().find_class(module, name)
        raise UnsafeMetadata(f"{module}.{name}")


class _SafeReader(FileSystemReader):
    """DCP's file reader, with the metadata read by `_MetadataUnpickler` instead of pickle.load."""

    def read_metadata(self, *args, **kwargs):
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeBytes:
    """DCP's load_bytes, with the value read as plain data (torch.load(weights_only=True)) where DCP's own
    reads it with weights_only=False."""

    def load_bytes(self, read_item, value) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class _SafeLoadPlanner(_SafeBytes, DefaultLoadPlanner):
    """DCP's planner into a state dict of this run's own shapes."""


class _SafeEmptyPlanner(_SafeBytes, _EmptyStateDictLoadPlanner):
    """DCP's planner that builds the state dict from the metadata: consolidation on one process."""


def read_metadata(path: Path):
    """A sharded checkpoint's DCP metadata, unpickled by `_MetadataUnpickler`. Raises CheckpointError, one
    line, before DCP (which would log a traceback and retry) is given the file."""
    from store.checkpoint import CheckpointError

    try:
        with open(path / ".metadata", "rb") as f:
            return _MetadataUnpickler(f).load()
    except UnsafeMetadata as err:
        raise CheckpointError(
            f"checkpoint {path}: its .metadata holds pickled objects other than DCP's metadata ({err}); refused "
            "unread (it may run code)"
        ) from None
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path}: its .metadata is unreadable ({type(err).__name__})"
        ) from None


def save_sharded(parts, state, path: Path, *also: Path) -> None:
    """Every rank writes its shards of the model and optimizer into a new directory, rank 0 the rest of
    the checkpoint (state.pt) after them, and then links each name to it (`path` and `also`, given as .pt
    names: last.pt is linked as last.dcp). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from store.checkpoint import checkpoint_of, prune_step_checkpoints, save_checkpoint

    run = RunDir(parts.run_dir)
    token = [uuid.uuid4().hex[:8] if parts.ddp.is_main else None]
    if is_distributed():  # every rank writes into the directory rank 0 names
        torch.distributed.broadcast_object_list(token, src=0)
    target = run.shard_dir(state.step, token[0])
    model, optimizer = get_state_dict(parts.model, parts.optimizer)
    dcp.save({"model": model, "optimizer": optimizer}, storage_writer=FileSystemWriter(target))
    # dcp.save returns on rank 0 after every rank's files are written and synced, and its .metadata
    if parts.ddp.is_main:
        save_checkpoint(checkpoint_of(parts, state, leave_out=SHARDED_PARTS), target / STATE)
        for name in (path, *also):
            _link(RunDir.sharded(name), target)
        if any(RunDir.is_step_checkpoint(other) for other in also):
            prune_step_checkpoints(run, parts.trainer.keep_step_checkpoints)
        _remove_unlinked(run)
    barrier()  # no rank reads or writes a checkpoint before this one is complete


def _link(name: Path, target: Path) -> None:
    """Point `name` at `target` (relative: the run directory may move), atomically."""
    tmp = name.with_name(f".{name.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, name)
    fsync_dir(name.parent)


def _remove_unlinked(run: RunDir) -> None:
    """Shard directories no name links to any more (replaced, pruned, or left by a kill mid-write)."""
    linked = {Path(os.readlink(p)).name for p in run.checkpoints.iterdir() if p.is_symlink()}
    for d in run.shard_dirs():
        if d.name not in linked:
            shutil.rmtree(d, ignore_errors=True)


def read_state(path: Path) -> dict:
    """A sharded checkpoint's state.pt, read and checked as a checkpoint file is (store/checkpoint.py)."""
    from store.checkpoint import CheckpointError, load_checkpoint

    if not (path / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {path} is not a sharded checkpoint (it has no .metadata)")
    read_metadata(path)  # refused here, before any reader goes on
    return load_checkpoint(path / STATE)


def load_sharded(path: Path, model: torch.nn.Module, optimizer=None) -> None:
    """Load a sharded checkpoint's model (and optimizer) state into `model`, sharded or not, at this world
    size: each rank reads the pieces of the saved shards that its own shards hold. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        wanted = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        wanted = {"model": model_sd, "optimizer": optim_sd}
    read_metadata(path)
    try:
        dcp.load(wanted, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner())
    except Exception as err:  # DCP wraps each rank's error in its own: one line naming the file
        raise _refusal(path, err, "cannot be loaded into this model") from None
    if optimizer is None:
        set_model_state_dict(model, wanted["model"])
    else:
        set_state_dict(
            model, optimizer, model_state_dict=wanted["model"], optim_state_dict=wanted["optimizer"]
        )


def load_model(parts, ckpt, with_optimizer: bool) -> tuple[str, ...]:
    """A sharded checkpoint's model (and optimizer) into parts.model, by each rank reading its own pieces,
    sharded or not; or a file's whole weights into a sharded model. Returns the parts loaded
    (store/checkpoint.py's `restore` loads the others; it loads a file into a plain model itself)."""
    both = ("model", "optimizer") if with_optimizer else ("model",)
    if ckpt.sharded:
        load_sharded(ckpt.path, parts.model, parts.optimizer if with_optimizer else None)
    else:  # one process's file, resumed by several ranks: each keeps its shards
        _load_whole(parts, ckpt, with_optimizer)
    return both


def _load_whole(parts, ckpt, with_optimizer: bool) -> None:
    """A checkpoint file's whole weights (and optimizer state) into a sharded model: every rank reads the
    file and keeps its shards. The optimizer's state goes back by position, as in the file (the same config
    builds the same groups in the same order), each tensor of a parameter's shape sharded as it is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.tensor import distribute_tensor

    try:
        set_model_state_dict(parts.model, ckpt.model_weights, options=StateDictOptions(full_state_dict=True))
        if not with_optimizer:
            return
        params = [p for group in parts.optimizer.param_groups for p in group["params"]]
        saved = ckpt._saved["optimizer"]
        state = {}
        for i, entry in saved["state"].items():
            p = params[i]
            state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                        if isinstance(v, torch.Tensor) and v.shape == p.shape else v for k, v in entry.items()}  # fmt: skip
        parts.optimizer.load_state_dict({**saved, "state": state})
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise _refusal(ckpt.path, err, "cannot be loaded into this sharded model") from None


def consolidated(path: Path) -> dict:
    """The whole model weights of a sharded checkpoint, on this process alone (no process group): what
    eval.py, load_trained and init_from= read."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    read_metadata(path)
    loaded: dict = {}
    try:
        _load_state_dict(loaded, storage_reader=_SafeReader(path), planner=_SafeEmptyPlanner(keys={"model"}),
                         no_dist=True)  # fmt: skip
    except Exception as err:
        raise _refusal(path, err, "is unreadable or incomplete") from None
    return loaded.get("model", {})


def _refusal(path: Path, err: Exception, what: str) -> Exception:
    """One CheckpointError line for what DCP raised (it wraps each rank's error in its own)."""
    from store.checkpoint import CheckpointError

    first = (str(err).strip().splitlines() or [""])[0][:200]
    return CheckpointError(f"checkpoint {path} {what}: {first}")
