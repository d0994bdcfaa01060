"""DistributedDataParallel plumbing: one process per device, started by torchrun or by SLURM.

The environment decides, as in nanoGPT: under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT) the same train.py joins a process group; run plainly it stays a single process. A SLURM
job with several tasks (srun, or Hydra's submitit launcher) sets SLURM_PROCID/SLURM_NTASKS instead, and
_export_from_slurm turns them into the same variables. Backends: nccl on CUDA, gloo on CPU. Each rank
drives one device, `cuda:<LOCAL_RANK>`.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import hashlib
import logging
import os
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from setup.config import ConfigError
from setup.runtime import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes TensorBoard events, checkpoints and metrics.json."""
        return self.rank == 0


def _export_from_slurm() -> None:
    """Fill RANK, WORLD_SIZE, MASTER_ADDR, ... for the tasks of a SLURM job (srun, or Hydra's submitit
    launcher) or of submitit's local executor, as torchrun would have; submitit parses SLURM's node list."""
    if "RANK" in os.environ:
        return  # torchrun (possibly inside a SLURM job) already did
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    tasks = os.environ.get("SUBMITIT_LOCAL_NTASKS" if executor == "local" else "SLURM_NTASKS", "1")
    if int(tasks or 1) <= 1:
        return
    try:
        from submitit import JobEnvironment
        from submitit.slurm.slurm import SlurmJobEnvironment
    except ImportError:
        raise ConfigError(
            f"this process is one of {tasks} SLURM tasks, but submitit, which reads SLURM's variables for "
            "torch.distributed, is not installed: pip install -e '.[slurm]', or start the tasks with torchrun"
        ) from None
    # A submitit job knows its executor; tasks that a plain `srun` started are SLURM's.
    env = JobEnvironment() if executor else SlurmJobEnvironment()
    # The port follows the job id (as in submitit's TorchDistributedEnvironment): every task picks the same.
    port = random.Random(env.job_id).randint(20000, 60000)
    os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(env.global_rank), str(env.num_tasks)
    os.environ["LOCAL_RANK"] = str(env.local_rank)
    os.environ["LOCAL_WORLD_SIZE"] = str(env.num_tasks // env.num_nodes)


def world_size() -> int:
    """How many ranks this launch has (torchrun's or SLURM's variables), before joining their group."""
    _export_from_slurm()
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str) -> Distributed:
    """Join the process group when launched as several processes; return this process's place in it."""
    _export_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world_size == 1:
        return Distributed(0, 0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if is_distributed():
        # A later job of a multirun in the same workers: keep the group. Destroying and re-creating it in
        # the same processes hangs gloo's rendezvous or fails its full-mesh connect.
        log.info("DDP: %d processes, %s backend (the workers' group, kept across jobs); rank %d on %s",
                 world_size, dist.get_backend(), rank, device)  # fmt: skip
        return Distributed(rank, local_rank, world_size, device)
    # Left once, as the process exits (not after each job).
    atexit.register(cleanup_distributed)
    if device.type == "cuda":
        # One GPU per rank. `%`: a launcher that already narrowed CUDA_VISIBLE_DEVICES leaves one visible.
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    log.info("DDP: %d processes, %s backend; rank %d on %s", world_size, dist.get_backend(), rank, device)
    return Distributed(rank, local_rank, world_size, device)


def wrap_ddp(model: torch.nn.Module, ddp: Distributed) -> torch.nn.Module:
    """DistributedDataParallel around the (compiled) model when there are several ranks: it broadcasts
    rank 0's weights now and averages gradients in backward, so every rank keeps equal weights."""
    from setup.sharding import is_sharded

    if ddp.world_size == 1 or is_sharded(model):  # FSDP2 reduces the gradients itself
        return model
    device_ids = [ddp.device.index] if ddp.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sync_gradients(model: torch.nn.Module, sync: bool):
    """Gradient accumulation: skip DDP's all-reduce on micro-batches that end in no optimizer step (the
    context must hold the forward pass as well as backward). A no-op outside DDP."""
    # isinstance, not hasattr: a missing attribute on an nn.Module raises inside __getattr__, every step.
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if is_fsdp(model):  # FSDP2: keep the unsharded gradients, reduce-scatter at the last
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether FSDP2 shards this model. Read without importing FSDP, which takes a second or more of every
    run's start-up (DTensor, dynamo): a model is an FSDPModule only once `fully_shard` has imported it."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_distributed() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over all ranks, in one collective (float64 on the wire: counts stay exact).
    Without a process group, the tensors themselves."""
    if not is_distributed():
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `tensor` (concatenated along dim 0, rank 0's first; the ranks may hold different
    numbers of rows, the other dimensions equal), on every rank. Without a process group, the tensor."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(counts, rows)
    most = int(max(c.item() for c in counts))
    padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)  # all_gather wants equal shapes: padded, then cut back
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts, strict=True)])


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (a collective: every rank must ask)."""
    if not is_distributed():
        return value
    t = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on any rank: a collective, so every rank must ask at the same step."""
    if not is_distributed():
        return flag
    (count,) = all_reduce_sum(torch.tensor(float(flag), device=device))
    return bool(count > 0)


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of tensors' exact bytes, in name order: equal digests mean bit-equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_weights_in_sync(model: torch.nn.Module, ddp: Distributed) -> None:
    """After training, every rank logs a digest of its parameters and compares them: DDP keeps them equal,
    so a difference means a bug (a rank-dependent branch in the model, a parameter changed outside the
    optimizer) and is reported loudly. Buffers (BatchNorm statistics) are rank-local and left out."""
    if ddp.world_size == 1:
        return
    from setup.sharding import full_weights, is_sharded

    # A sharded model's ranks hold different shards: their digests are of the whole weights, gathered.
    named = model.named_parameters()
    if is_sharded(model):  # every parameter by each of its names (a tied one twice), as a checkpoint has them
        buffers = {name for name, _ in model.named_buffers()}
        named = [(k, v) for k, v in full_weights(model).items() if k not in buffers]
    digest = weights_digest(named)
    log.info("Weights digest on rank %d: %s", ddp.rank, digest)
    digests: list = [None] * ddp.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        log.warning("DDP ranks ended with different weights (digests by rank: %s)", ", ".join(digests))


def barrier() -> None:
    """Wait for every rank: e.g. before the others read a checkpoint that rank 0 has just written."""
    if is_distributed():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group, once, at exit: the jobs of a multirun share it."""
    if is_distributed():
        # DDP's reducer keeps the process group alive, and the DDP module sits in reference cycles (its
        # hooks), so only the collector frees it. Left to interpreter shutdown, gloo's teardown aborts the
        # process ("terminate called without an active exception", exit 134) in about 1 run of 7.
        gc.collect()
        if dist.get_backend() == "gloo":
            # Leave together: a rank that tears gloo down while a peer is still busy (rank 0 writes the
            # run's last files) aborted the same way, once in a loaded CI run. A peer that died instead
            # answers within the timeout, and this rank leaves alone.
            with contextlib.suppress(RuntimeError):
                dist.monitored_barrier(timeout=timedelta(seconds=60))
        dist.destroy_process_group()
