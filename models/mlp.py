"""A multilayer perceptron over flattened pixels."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden_dims: list[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
