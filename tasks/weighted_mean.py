"""The weighted mean of a split's values (a loss over padded tokens, say) as a torchmetrics metric: two sums,
value × weight and weight, that torchmetrics adds over the DDP ranks.

Not torchmetrics' MeanMetric: with its NaN check off (nan_strategy="disable", which the tasks need since the
check reads the values back to the host every batch) torchmetrics 1.9 replaces the weights with ones
(torchmetrics #3434), so a masked loss would average the padding in."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class WeightedMean(Metric):
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value, weight=None) -> None:
        """Add `value` (a number or a tensor) with `weight` (one that broadcasts to it; None: ones)."""
        value = torch.as_tensor(value, device=self.device).to(self.total.dtype)
        if weight is None:
            self.total += value.sum()
            self.weight += value.numel()
            return
        weight = torch.broadcast_to(torch.as_tensor(weight, device=self.device).to(value.dtype), value.shape)
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.weight
