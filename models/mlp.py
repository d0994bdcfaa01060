"""A multilayer perceptron over flattened inputs: image pixels or a feature vector."""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Sequential):
    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        hidden_dims: list[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)
