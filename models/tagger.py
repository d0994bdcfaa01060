"""A small token tagger: token ids [B, T] to one row of tag logits a token, [B, T, num_tags]. An embedding,
then residual blocks of a 1-D convolution over the sequence (centred, so each token reads its neighbours on
both sides; dilated 1, 2, 4, ... so the context doubles with each block), then a linear layer a token.

Padding (token id `pad_token`) is zeroed after every block, which is what the convolutions' own zero padding
past the end reads: a sentence's logits are the same whatever padding its batch gives it, so a sentence
tagged alone (predict.py) gets the tags it got in its test batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(
            width, width, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)  # Conv1d reads [B, C, T]
        return (x + self.dropout(F.gelu(h))) * keep


class Tagger(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_tags: int,
        width: int = 64,
        blocks: int = 4,
        kernel_size: int = 3,
        dropout: float = 0.1,
        pad_token: int = 0,
    ) -> None:
        super().__init__()
        if blocks < 0:
            raise ValueError(
                f"blocks={blocks} must be at least 0 (0: each token's tag from its own embedding)"
            )
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size={kernel_size} must be odd: the convolution is centred on its token"
            )
        self.pad_token = pad_token
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_token)
        self.blocks = nn.ModuleList(Block(width, kernel_size, 2**i, dropout) for i in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = (tokens != self.pad_token).unsqueeze(-1).to(self.embed.weight.dtype)
        x = self.embed(tokens) * keep
        for block in self.blocks:
            x = block(x, keep)
        return self.head(self.norm(x))
