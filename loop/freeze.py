"""trainer.freeze_backbone_epochs=N: the backbone (all but the model's head: optim/params.py
`head_and_backbone`) takes no gradient for the first N epochs, then trains.

Set at every epoch's start from the epoch number alone, the one in the checkpoint on a resume: a run
resumed before or after the switch freezes exactly what the run never stopped froze. The backbone's
parameters stay in the optimizer throughout; a parameter with no gradient is one the optimizer skips
(no step, no weight decay, no state until its first gradient), so its state and the schedule go on bit for
bit across the switch. BatchNorm's running statistics, buffers, still follow the data.
"""

from __future__ import annotations

import torch

from optim.params import head_and_backbone
from system.errors import ConfigError


def backbone_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """The backbone frozen (no gradients) or trained, for the epoch about to start."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if frozen and distributed and torch.distributed.get_world_size() > 1:  # DDP waits for every gradient
        raise ConfigError("trainer.freeze_backbone_epochs runs in one process only, not under DDP")
    for _, p in head_and_backbone(model)[1]:
        p.requires_grad_(not frozen)
