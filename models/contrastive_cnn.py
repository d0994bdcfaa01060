"""An encoder with a projection head, for contrastive pretraining (tasks/contrastive.py): the encoder is
SimpleCNN's `features`, under the name `encoder`, and the head a two-layer MLP, `projector`, as SimCLR
has it. Fine-tuning takes the encoder alone into a SimpleCNN classifier:
init_from_map={encoder.: features.} (the projector is left behind: conf/experiment/finetune_contrastive.yaml)."""

from __future__ import annotations

from torch import nn

from models.simple_cnn import SimpleCNN


class ContrastiveCNN(nn.Module):
    def __init__(self, in_channels: int, num_outputs: int, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        # SimpleCNN's own body, built by it: its weights' names and shapes are the classifier's.
        self.encoder = SimpleCNN(in_channels, 2, width).features
        self.projector = nn.Sequential(
            nn.Linear(2 * width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_outputs)
        )

    def shard_blocks(self) -> list[nn.Module]:
        """The conv blocks: FSDP's units, activation checkpointing's (setup/sharding.py)."""
        return [m for m in self.encoder if isinstance(m, nn.Sequential)]

    def forward(self, x):
        return self.projector(self.encoder(x))
