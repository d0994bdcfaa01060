"""1-D signals of noise with 1 to 3 bumps each, made from the seed: samples of different target lengths,
batched by `collate` (torch's default collate would try to stack them)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.splits import Splits


class BumpSignals(Dataset):
    def __init__(self, n: int, length: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.signals, self.positions = [], []
        grid = torch.arange(length, dtype=torch.float32)
        for _ in range(n):
            count = int(torch.randint(1, 4, (), generator=gen))
            where = torch.randperm(length - 4, generator=gen)[:count].sort().values + 2
            signal = 0.3 * torch.randn(length, generator=gen)
            for p in where:
                signal += torch.exp(-0.5 * (grid - p) ** 2)
            self.signals.append(signal[None])  # [1, length]: one channel
            self.positions.append(where)

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, i: int):
        return self.signals[i], self.positions[i]


def bump_signals(train_size: int, val_size: int, test_size: int, length: int, seed: int) -> Splits:
    return Splits(
        *(BumpSignals(n, length, seed + k) for k, n in enumerate((train_size, val_size, test_size)))
    )


def collate(samples: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Signals stacked, positions kept as a list: one tensor of 1 to 3 positions per signal."""
    return torch.stack([s for s, _ in samples]), [p for _, p in samples]
