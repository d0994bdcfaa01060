"""A small 1-D conv net that scores each position of a signal. In train mode, given the true positions, it
returns its own losses (as torchvision's detectors do); in eval mode, the positions it finds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BumpFinder(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2), nn.ReLU(), nn.Conv1d(width, width, 5, padding=2), nn.ReLU(),
            nn.Conv1d(width, 1, 1),
        )  # fmt: skip

    def forward(self, signals: torch.Tensor, positions: list[torch.Tensor] | None = None):
        scores = self.net(signals)[:, 0]  # [batch, length] logits
        if positions is None:
            peaks = (scores > 0) & (scores >= F.max_pool1d(scores[:, None], 3, 1, 1)[:, 0])  # local maxima
            return [row.nonzero()[:, 0] for row in peaks]
        target = torch.zeros_like(scores)
        for row, where in enumerate(positions):
            target[row, where] = 1.0
        target = F.max_pool1d(target[:, None], 3, 1, 1)[:, 0]  # a bump's neighbours count as found too
        found = (scores.sigmoid() * target).sum(dim=1) / 3
        true = torch.tensor([float(len(p)) for p in positions], device=scores.device)
        return {
            "loss_positions": F.binary_cross_entropy_with_logits(scores, target),
            "loss_count": F.mse_loss(found, true) / 10,
        }
