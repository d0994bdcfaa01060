"""Any image model of timm by name (`model=timm model.name=convnext_atto`), with its pretrained weights
when `pretrained=True`: timm.create_model sizes the classifier for the classes and the stem for the
channels. timm is an optional extra (pip install -e '.[timm]'), imported only when such a model is built."""

from __future__ import annotations

import difflib

from torch import nn

from models.pretrained import WeightsError, wanted
from system.errors import ConfigError


def timm_model(name: str, in_channels: int, num_classes: int, pretrained: bool = False) -> nn.Module:
    timm = _known(name)
    load = wanted(pretrained)
    try:
        model = timm.create_model(name, pretrained=load, num_classes=num_classes, in_chans=in_channels)
    except (OSError, RuntimeError, ValueError) as err:  # offline without the file, a refused download
        if not load:
            raise
        raise WeightsError(_missing(name, err)) from None
    head = model.pretrained_cfg.get("classifier") or ()
    model.head_prefixes = tuple(f"{h}." for h in ([head] if isinstance(head, str) else head))
    return model


def preprocessing(name: str, **_) -> dict:
    """What the weights were trained on: their mean, std and input size (setup/pretrained.py reads it)."""
    cfg = _pretrained_cfg(name)
    return {"mean": list(cfg.mean), "std": list(cfg.std), "image_size": cfg.input_size[-1]}


def _known(name: str):
    """timm, once it is there and knows `name`; else one line (with the close names it knows)."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs timm: pip install -e '.[timm]'") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else " (timm.list_models() lists them)"
        raise ConfigError(f"model.name={name!r} is not a model timm knows{hint}")
    return timm


def _pretrained_cfg(name: str):
    _known(name)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(
            f"model.name={name}: timm has no pretrained weights of it (model.pretrained=false)"
        )
    return cfg


def _missing(name: str, err: Exception) -> str:
    """The file timm looks for, and the directory of the Hugging Face cache it looks in."""
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = _pretrained_cfg(name)
    repo = cfg.hf_hub_id or "?"
    file = cfg.hf_hub_filename or "model.safetensors"
    cause = " ".join(str(err).split())[:160] or type(err).__name__
    folder = f"{HF_HUB_CACHE}/models--{repo.replace('/', '--')}"
    return (
        f"model.name={name} pretrained: {file} of https://huggingface.co/{repo} is not in {folder} and could "
        f"not be downloaded ({cause}); download it where online (`hf download {repo} {file}`) and copy that "
        f"cache folder there (or set HF_HOME to a directory whose hub/ holds it)"
    )
