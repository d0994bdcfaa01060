"""Pretrained weights for the models of this folder: read from the local cache (downloaded into it when
online), their first convolution fitted to the data's channels, and one line naming the file and the
directory to put it in when neither works.

A model built from a checkpoint (resume=, eval.py, load_trained) gets its weights from that checkpoint:
`from_checkpoint()` builds the same architecture without reading (or downloading) the pretrained file.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math

import torch

from system.errors import UserError

log = logging.getLogger(__name__)

_FROM_CHECKPOINT = contextvars.ContextVar("weights_from_checkpoint", default=False)


class WeightsError(UserError):
    """Pretrained weights that cannot be had: not in the cache and no download, or an unknown name."""


@contextlib.contextmanager
def from_checkpoint():
    """Within it, a model asked for pretrained weights builds its architecture only: a checkpoint's
    weights replace them next, and the machine may be offline without the pretrained file."""
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def wanted(pretrained: bool) -> bool:
    """Whether to read the pretrained file now."""
    return bool(pretrained) and not _FROM_CHECKPOINT.get()


def torch_hub_state_dict(url: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict at `url`, from torch hub's cache ($TORCH_HOME/hub/checkpoints/<its file name>, as
    torchvision keeps it), downloaded there (whole, its hash checked) when absent; read weights-only."""
    import os

    from torch.hub import HASH_REGEX, download_url_to_file, get_dir

    directory = os.path.join(get_dir(), "checkpoints")
    name = os.path.basename(url)
    path = os.path.join(directory, name)
    try:
        if not os.path.exists(path):  # downloaded to a temporary file, checked, then moved: whole or absent
            os.makedirs(directory, exist_ok=True)
            found = HASH_REGEX.search(name)
            download_url_to_file(url, path, found.group(1) if found else None, progress=False)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # no network, a proxy, a refused or corrupt file: all the user's to fix
        cause = " ".join(str(err).split())[:200] or type(err).__name__
        raise WeightsError(
            f"{what}: {name} is not in {directory} and could not be downloaded from {url} ({cause}); "
            f"put the file there (or set TORCH_HOME to a directory whose hub/checkpoints/ holds it)"
        ) from None


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters for `in_channels` inputs, as timm adapts them: summed for one channel, else repeated
    and scaled so that the layer's response to a grey image stays the same."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)
