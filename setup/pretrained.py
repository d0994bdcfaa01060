"""A pretrained model's data as its weights were trained on: their mean, std and image size go into the
run's config before the data is built, unless the command line sets them (`data.mean=...`).

The values are written into cfg.data and listed in `data.found_in_files` (the weights are files too), so
the config stored in every checkpoint says what was used: eval.py, predict and resume= read them from it,
and nothing runs again when a stored config is read. A model says where its weights' values are by a
function `preprocessing(**its config's parameters) -> {"mean", "std", "image_size"}` in the module of its
`_target_` (models/resnet.py, models/timm_model.py); a model without one is left alone.
"""

from __future__ import annotations

import importlib
import logging

from omegaconf import DictConfig, OmegaConf, open_dict

KEYS = ("mean", "std", "image_size")


def take_preprocessing(cfg: DictConfig, log: logging.Logger) -> None:
    """For a new run of a model with `pretrained: true`: the weights' mean, std and image size into
    cfg.data, but for those the user set on the command line; one log line says which were taken."""
    if not cfg.model.get("pretrained") or cfg.get("resume"):
        return  # a resumed run's stored config holds what its first start chose
    module, _, _ = str(cfg.model._target_).rpartition(".")
    values = getattr(importlib.import_module(module), "preprocessing", None)
    if values is None:
        return
    params = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    given = command_line_keys()
    taken = {
        k: v for k, v in values(**params).items() if k in KEYS and k in cfg.data and f"data.{k}" not in given
    }
    if not taken:
        return
    channels = cfg.data.get("in_channels")
    for key in ("mean", "std"):  # RGB values for a grey or multi-band input: their average per channel
        if key in taken and channels and len(taken[key]) != channels:
            taken[key] = [sum(taken[key]) / len(taken[key])] * channels
    with open_dict(cfg.data):
        for key, value in taken.items():
            cfg.data[key] = value
        cfg.data.found_in_files = sorted({*(cfg.data.get("found_in_files") or []), *taken})
    shown = " ".join(f"data.{k}={v}" for k, v in taken.items())
    log.info("From the pretrained weights: %s (set them on the command line to choose others)", shown)


def command_line_keys() -> set[str]:
    """The keys the command line sets (`data.mean=[...]`, `+x=1`, `~y`), from Hydra's record of it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
