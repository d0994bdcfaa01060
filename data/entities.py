"""Toy sentences for token tagging, generated from a seed in memory (no download): lines of lowercase words,
capitalized names, numbers and codes such as `ab12`, one tag a character in the BIO scheme of named-entity
recognition (O, B-NAME, I-NAME, B-NUM, I-NUM). Tokens are the characters' ASCII bytes, as predict.py reads a
text file's lines.

A tag needs the characters before it: a lowercase letter is I-NAME in a name and O in a plain word, a digit
is B-NUM or I-NUM in a number and O in a code. A lookup of each character alone cannot be right on all of
them (`lookup_accuracy` measures how far it gets).

Sentences differ in length: a split is a TensorDataset of tokens padded with 0 (the NUL byte, never in the
text) and tags padded with -100 (cross-entropy's ignore_index), both [N, max_length]; `collate` cuts each
batch to its longest sentence."""

from __future__ import annotations

import random
import string

import torch
from torch.utils.data import TensorDataset

from data.splits import DatasetError, Splits, split_indices

TAGS = ("O", "B-NAME", "I-NAME", "B-NUM", "I-NUM")
PAD_TOKEN, PAD_TAG = 0, -100
O, B_NAME, I_NAME, B_NUM, I_NUM = range(len(TAGS))  # noqa: E741 (the BIO scheme names its tag O)
LETTERS = string.ascii_lowercase[:12]  # a small alphabet: plain words and names share it


def word(rng: random.Random) -> tuple[str, list[int]]:
    """One word and its tags: a name (capital, then lowercase), a number, a code (letters, then digits), or
    a plain lowercase word."""
    kind = rng.random()
    letters = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 6)))
    digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(1, 4)))
    if kind < 0.25:
        return letters[0].upper() + letters[1:], [B_NAME] + [I_NAME] * (len(letters) - 1)
    if kind < 0.45:
        return digits, [B_NUM] + [I_NUM] * (len(digits) - 1)
    if kind < 0.6:
        return letters + digits, [O] * (len(letters) + len(digits))
    return letters, [O] * len(letters)


def sentence(rng: random.Random, max_length: int) -> tuple[str, list[int]]:
    """Words separated by single spaces, up to max_length characters (at least one word)."""
    text, tags = word(rng)
    for _ in range(rng.randint(0, 9)):
        more, more_tags = word(rng)
        if len(text) + 1 + len(more) > max_length:
            break
        text, tags = f"{text} {more}", [*tags, O, *more_tags]
    return text[:max_length], tags[:max_length]


def encode(lines: list[tuple[str, list[int]]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.full((len(lines), max_length), PAD_TOKEN, dtype=torch.long)
    tags = torch.full((len(lines), max_length), PAD_TAG, dtype=torch.long)
    for i, (text, line_tags) in enumerate(lines):
        tokens[i, : len(text)] = torch.tensor(list(text.encode("ascii")))
        tags[i, : len(text)] = torch.tensor(line_tags)
    return tokens, tags


def entities(
    num_samples: int, max_length: int, val_fraction: float, test_fraction: float, seed: int, split_seed: int
) -> Splits:
    """`seed` draws the sentences (the same corpus on any machine), `split_seed` splits them."""
    if max_length < 7:  # the longest word: a 6-letter code with 4 digits is cut, but a name fits
        raise DatasetError(f"entities needs max_length >= 7 characters, got {max_length}")
    rng = random.Random(seed)
    tokens, tags = encode([sentence(rng, max_length) for _ in range(num_samples)], max_length)
    val, test, train = split_indices(num_samples, [val_fraction, test_fraction], split_seed)
    for name, part in (("train", train), ("val", val), ("test", test)):
        if len(part) == 0:
            raise DatasetError(f"entities: the {name} split is empty; raise num_samples or its fraction")
    return Splits(*(TensorDataset(tokens[i], tags[i]) for i in (train, val, test)))


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, tags), each [B, T] with T the batch's longest sentence: the padding that every sentence of
    the batch has is cut, so a batch of short sentences costs short steps."""
    tokens = torch.stack([s[0] for s in samples])
    tags = torch.stack([s[1] for s in samples])
    longest = max(int((tags != PAD_TAG).sum(dim=1).max()), 1)
    return tokens[:, :longest], tags[:, :longest]


def lookup_accuracy(train: TensorDataset, test: TensorDataset) -> float:
    """The token accuracy of the best per-character lookup (each character's most frequent train tag): the
    ceiling of a tagger that reads no context."""
    tokens, tags = train.tensors
    real = tags != PAD_TAG
    counts = torch.zeros(256, len(TAGS), dtype=torch.long)
    counts.index_put_(
        (tokens[real], tags[real]), torch.ones(int(real.sum()), dtype=torch.long), accumulate=True
    )
    best = counts.argmax(dim=1)
    tokens, tags = test.tensors
    real = tags != PAD_TAG
    return float((best[tokens[real]] == tags[real]).float().mean())
