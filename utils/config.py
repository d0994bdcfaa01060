"""Config checks that YAML cannot express: types and allowed values of the trainer, data and logging keys.

Hydra already rejects unknown groups, unknown options and typo'd keys before the run starts. Types are
checked here, at the start of the run, so `python train.py trainer.max_epochs=ten` fails in one line
instead of deep inside the loop. Keys a forker adds to these groups are allowed; they are just not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(Exception):
    """A config value that cannot work; the message says which key and why."""


@dataclass
class TrainerSchema:
    max_epochs: int
    max_steps: Optional[int]
    limit_batches: Optional[int]
    device: str
    precision: str
    grad_clip: Optional[float]
    accumulate_grad_batches: int
    val_every_n_epochs: int
    seed: int
    deterministic: bool
    compile: bool
    channels_last: bool
    cudnn_benchmark: bool
    checkpoint_every_n_steps: Optional[int]
    keep_step_checkpoints: Optional[int]
    skip_nonfinite: bool


@dataclass
class DataSchema:
    in_channels: int
    num_classes: int
    image_size: int
    batch_size: int
    num_workers: int


@dataclass
class LoggingSchema:
    graph: bool
    every_n_steps: int
    progress_bar: bool
    images: bool
    confusion_matrix: bool
    histograms_every_n_epochs: int
    lr_per_group: bool


CHOICES = {"trainer.device": ("auto", "cpu", "cuda"), "trainer.precision": ("32", "bf16", "16")}
POSITIVE = (
    "trainer.max_epochs",
    "trainer.accumulate_grad_batches",
    "trainer.val_every_n_epochs",
    "trainer.checkpoint_every_n_steps",
    "trainer.keep_step_checkpoints",
    "data.batch_size",
    "logging.every_n_steps",
)
NON_NEGATIVE = ("logging.histograms_every_n_epochs",)  # 0 switches the feature off


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad key; convert values in place (e.g. precision 16 -> "16")."""
    for group, schema in (("trainer", TrainerSchema), ("data", DataSchema), ("logging", LoggingSchema)):
        node = cfg[group]
        names = [f.name for f in fields(schema) if f.name in node]
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), {k: node[k] for k in names})
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or getattr(err, "key", "?")
            first = str(err).splitlines()[0]
            raise ConfigError(f"{group}.{key}: {first}") from None
        for k in names:
            node[k] = typed[k]
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if str(value) not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}={value} must be 0 (off) or more")


def plain(node: DictConfig) -> SimpleNamespace:
    """A config group as plain Python attributes, resolved: for code that reads values in a hot loop."""
    return SimpleNamespace(**OmegaConf.to_container(node, resolve=True))
