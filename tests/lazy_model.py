"""A user's model with lazy modules (shapes taken at the first forward), for tests/test_untrusted.py."""

from torch import nn


class LazyMLP(nn.Sequential):
    def __init__(self, input_shape, num_outputs: int, hidden_dims=(32,), dropout: float = 0.0) -> None:
        super().__init__(nn.Flatten(), nn.LazyLinear(hidden_dims[0]), nn.ReLU(), nn.LazyLinear(num_outputs))
