"""The two loader kinds: same seeded order, resumable mid-epoch, sharded across ranks without overlap."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from data.splits import Splits
from setup.loaders import SampledLoader, TensorBatches, build_dataloaders


class Numbers(Dataset):
    """A non-tensor dataset: goes through DataLoader, like a folder of files would."""

    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


def labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_in_memory_data_is_batched_by_index_and_file_data_by_dataloader():
    tensors = TensorDataset(torch.arange(50.0).unsqueeze(1), torch.arange(50))
    loaders = build_dataloaders(Splits(tensors, tensors, Numbers()), batch_size=8, num_workers=0, seed=0,
                                pin_memory=False)  # fmt: skip
    assert isinstance(loaders.train, TensorBatches) and isinstance(loaders.test, SampledLoader)
    # Train: shuffled, ragged last batch dropped. Val/test: every sample once, in order.
    assert len(loaders.train) == 6 and len(labels(loaders.train)) == 48
    assert labels(loaders.val) == list(range(50)) == labels(loaders.test)


def test_both_kinds_visit_the_same_seeded_order():
    tensors = TensorDataset(torch.arange(50.0).unsqueeze(1), torch.arange(50))
    a = TensorBatches(tensors, 8, shuffle=True, seed=3, drop_last=False)
    b = SampledLoader(Numbers(), 8, shuffle=True, seed=3, drop_last=False, num_workers=0, pin_memory=False)
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert labels(a) == labels(b)
    a.set_epoch(0)
    first = labels(a)
    a.set_epoch(1)
    assert labels(a) != first, "each epoch must reshuffle"


def test_start_batch_resumes_mid_epoch():
    tensors = TensorDataset(torch.arange(50.0).unsqueeze(1), torch.arange(50))
    for loader in (
        TensorBatches(tensors, 8, shuffle=True, seed=1, drop_last=True),
        SampledLoader(Numbers(), 8, shuffle=True, seed=1, drop_last=True, num_workers=0, pin_memory=False),
    ):
        loader.set_epoch(2)
        whole = labels(loader)
        loader.set_epoch(2, start_batch=3)
        assert labels(loader) == whole[3 * 8 :]


def test_ranks_split_an_epoch_without_overlap():
    tensors = TensorDataset(torch.arange(50.0).unsqueeze(1), torch.arange(50))
    shards = []
    for rank in range(2):
        loader = TensorBatches(tensors, 5, shuffle=True, seed=0, drop_last=False, rank=rank, world_size=2)
        loader.set_epoch(4)
        shards.append(labels(loader))
    assert len(shards[0]) == len(shards[1]) == 25
    assert sorted(shards[0] + shards[1]) == list(range(50))


def collate_pairs(samples: list) -> dict:
    """A collate as a fork writes one: a list of (x, y) samples in, a dict batch out."""
    return {"x": torch.stack([x for x, _ in samples]), "y": torch.tensor([int(y) for _, y in samples])}


def test_a_collate_given_makes_the_batches_of_in_memory_data_too():
    tensors = TensorDataset(torch.arange(50.0).unsqueeze(1), torch.arange(50))
    loaders = build_dataloaders(Splits(tensors, tensors, Numbers()), batch_size=8, num_workers=0, seed=0,
                                pin_memory=False, collate_fn=collate_pairs)  # fmt: skip
    for split in ("train", "val", "test"):  # in memory (train, val) as through a DataLoader (test)
        batches = list(getattr(loaders, split))
        assert all(isinstance(b, dict) for b in batches), split
        assert sorted(torch.cat([b["y"] for b in batches]).tolist())[:5] == [0, 1, 2, 3, 4]
    # Without one, in-memory batches stay the gathered tensors.
    plain = build_dataloaders(Splits(tensors, tensors, tensors), batch_size=8, num_workers=0, seed=0,
                              pin_memory=False)  # fmt: skip
    assert all(isinstance(b, tuple) for b in plain.val)
