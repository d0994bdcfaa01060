"""Batches for the loop. In-memory tensors are sliced a whole batch at a time; file datasets go through
DataLoader workers. Both shuffle with a permutation fixed by (seed, epoch), so a run's data order can be
reproduced, resumed mid-epoch (`start_batch`) and sharded across DDP ranks."""

from __future__ import annotations

import atexit
import math
import random
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from data.splits import Splits
from setup.config import ConfigError
from system.signals import held_while_forking, quiet_worker


def epoch_order(
    n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1, pad: bool = True
):
    """The indices this rank visits in this epoch: every rank sees the same permutation and takes every
    world_size-th item, as torch's DistributedSampler does. Training pads by wrapping, so that all ranks
    run the same number of steps (DDP needs it); evaluation does not, so that no sample counts twice."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    if world_size > 1 and pad:
        order = torch.cat([order, order[: shard_size(n, rank, world_size) * world_size - n]])
    return order[rank::world_size]


def shard_size(n: int, rank: int, world_size: int, pad: bool = True) -> int:
    """How many of n items epoch_order gives this rank."""
    return math.ceil(n / world_size) if pad else len(range(rank, n, world_size))


class TensorBatches:
    """Batches of a TensorDataset by fancy indexing: one gather per tensor per batch. A `collate_fn` given
    (data.collate_fn) is called on the batch's samples, the list of per-sample tuples a DataLoader would
    hand it, cut from the gathered tensors: the same batches as the per-sample path, without its workers."""

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        collate_fn=None,
    ) -> None:
        self.tensors, self.collate_fn = dataset.tensors, collate_fn
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start_batch = 0, 0
        self.dataset = dataset

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = shard_size(len(self.dataset), self.rank, self.world_size, self.pad)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = epoch_order(
            len(self.dataset), self.seed, self.epoch, self.shuffle, self.rank, self.world_size, self.pad
        ).to(self.tensors[0].device)  # the order is drawn on the CPU (the same on every device and rank)
        for b in range(self.start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            batch = tuple(t[idx] for t in self.tensors)
            yield batch if self.collate_fn is None else self.collate_fn(list(zip(*batch, strict=True)))


class EpochSampler(Sampler[int]):
    """The same (seed, epoch) order as TensorBatches, for DataLoader-backed datasets."""

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ):
        self.n, self.shuffle, self.seed, self.batch_size = n, shuffle, seed, batch_size
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = shard_size(self.n, self.rank, self.world_size, self.pad)
        return max(0, n - self.start_batch * self.batch_size)

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle, self.rank, self.world_size, self.pad)
        # (epoch, index) keys: SeededSamples draws each sample's augmentation from them (see there).
        return ((self.epoch, i) for i in order[self.start_batch * self.batch_size :].tolist())


class SeededSamples(Dataset):
    """Each sample's random augmentation drawn from its own stream, seeded by (seed, epoch, index).

    Otherwise a worker's random state depends on everything it did before (persistent workers keep it
    across epochs) and on which worker got the sample, so a run resumed mid-epoch would crop and flip
    differently from the uninterrupted one. This way a sample looks the same whatever the number of
    workers, and the training process's own random streams (dropout) are never drawn from."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch) * 1_000_033 + index
        with torch.random.fork_rng(devices=[]):
            py_state, np_state = random.getstate(), np.random.get_state()
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class SampledLoader:
    """A DataLoader whose sampler follows set_epoch, so both loader kinds look the same to the loop."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        num_workers: int,
        pin_memory: bool,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        collate_fn=None,
    ) -> None:
        self.sampler = EpochSampler(len(dataset), shuffle, seed, batch_size, rank, world_size, pad)
        self.batch_size, self.drop_last = batch_size, drop_last
        # The loader's own generator: a new DataLoader iterator draws its workers' base seed from it, not
        # from the global stream, which a resumed run would otherwise have drawn from once more.
        self.loader = DataLoader(
            SeededSamples(dataset, seed),
            generator=torch.Generator().manual_seed(seed),
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_fn,  # None: torch's default, which stacks samples of one shape
            # Workers stay alive across epochs: re-forking them each epoch costs seconds on big datasets.
            persistent_workers=num_workers > 0,
            # Ctrl-C and scancel signal the whole process group: the workers leave the stop to the main process.
            worker_init_fn=quiet_worker if num_workers > 0 else None,
        )
        self.dataset = dataset

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        s = self.sampler
        n = shard_size(len(self.dataset), s.rank, s.world_size, s.pad)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        if self.loader.persistent_workers and self.loader._iterator is None:
            # The workers ignore SIGTERM (quiet_worker), which is how multiprocessing ends them at the
            # interpreter's exit, then waits for them: a loader still alive then (a run in a longer
            # process: a notebook, the tests) would hang the exit. Asked to stop first, they do.
            atexit.register(_shut_down, weakref.ref(self.loader))
        with held_while_forking():  # the first iterator forks the (persistent) workers
            return iter(self.loader)


def _shut_down(loader_ref) -> None:
    """Stop a persistent DataLoader's workers the way the DataLoader itself does (a None on each queue)."""
    loader = loader_ref()
    iterator = getattr(loader, "_iterator", None) if loader is not None else None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


@dataclass
class Loaders:
    train: TensorBatches | SampledLoader
    val: TensorBatches | SampledLoader
    test: TensorBatches | SampledLoader
    # The train split as evaluation reads a split (in order, unshuffled, each sample once, every rank its
    # share), for a task whose metric needs it (Task.reads_train_split: a kNN monitor). Building it costs
    # nothing: its batches are made only when it is iterated.
    train_in_order: TensorBatches | SampledLoader | None = None


# In-memory data up to this size moves to the GPU once, so that batches are gathered there with no host work.
DEVICE_RESIDENT_BYTES = 2 * 1024**3


def on_device(dataset: TensorDataset, device: torch.device | None) -> TensorDataset:
    if device is None or device.type != "cuda":
        return dataset
    if sum(t.numel() * t.element_size() for t in dataset.tensors) > DEVICE_RESIDENT_BYTES:
        return dataset
    return TensorDataset(*(t.to(device) for t in dataset.tensors))


def build_dataloaders(
    splits: Splits,
    batch_size: int,
    num_workers: int,
    seed: int,
    pin_memory: bool,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    collate_fn=None,
) -> Loaders:
    """The three splits' loaders. In-memory TensorDatasets are sliced into batches (no per-sample Python);
    any other dataset goes through a DataLoader. `collate_fn` (data.collate_fn) makes the batches of both
    kinds when given (samples that do not stack, padding, two views of a sample)."""

    def make(dataset: Dataset, train: bool):
        # Only the training split is shuffled and drops its ragged last batch (BatchNorm dislikes a batch of 1).
        # With several ranks, only training pads its shards to equal length (see epoch_order).
        drop_last = train and len(dataset) > batch_size * world_size
        if len(dataset) < world_size:
            raise ConfigError(f"a split of {len(dataset)} samples cannot feed {world_size} processes")
        if isinstance(dataset, TensorDataset):
            # A collate is written for the CPU samples a DataLoader gives: its data stays on the CPU.
            resident = on_device(dataset, device) if collate_fn is None else dataset
            return TensorBatches(resident, batch_size, train, seed, drop_last, rank, world_size, pad=train,
                                 collate_fn=collate_fn)  # fmt: skip
        return SampledLoader(dataset, batch_size, train, seed, drop_last, num_workers, pin_memory, rank,
                             world_size, pad=train, collate_fn=collate_fn)  # fmt: skip

    return Loaders(make(splits.train, True), make(splits.val, False), make(splits.test, False),
                   make(splits.train, False))  # fmt: skip
