"""The one schema every run's config passes before anything is built: types, ranges, unknown keys and
cross-checks, each failure one line naming the key.

Hydra already rejects unknown groups, unknown options and typo'd keys of existing groups. This adds what
YAML cannot say: `trainer.max_epochs=ten` (a type), `trainer.grad_clip=-1` (a range),
`+trainer.val_check_interval=0.5` (a key that nothing reads, which Hydra's `+` lets through), and
`trainer.limit_batches` with `trainer.max_steps` that disagree. Where a forker adds keys of their own:
model, data (`data.dataset` and beside it), optimizer, scheduler and task parameters are free; the
trainer, logging, paths, param_groups and top-level keys are the template's and are all checked, and so
is `declares` (what the model and task configs declare they take and give, read by the check before
training).

No torch here: this module is imported before Hydra parses the command line.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from types import SimpleNamespace
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from board import trackers
from setup.declares import check_declares
from system.errors import (  # ConfigError: defined below the floors that raise it, named here too
    ConfigError,
    did_you_mean,
)


def typed(node: DictConfig, schema: type):
    """A config group as an instance of its schema's dataclass (resolved, typed: autocomplete works)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


@dataclass
class EarlyStoppingSchema:
    patience: Optional[int] = None
    min_delta: float = 0.0


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
    val_every_n_steps: Optional[int] = None
    limit_val_batches: Optional[int] = None
    limit_test_batches: Optional[int] = None
    early_stopping: EarlyStoppingSchema = field(default_factory=EarlyStoppingSchema)
    max_time: Optional[str] = None
    overfit_batches: Optional[int] = None
    profile_steps: Optional[int] = None
    detect_anomaly: bool = False
    ema_decay: Optional[float] = None
    freeze_backbone_epochs: int = 0
    strategy: str = "ddp"  # under torchrun: ddp replicates the model, fsdp shards it (setup/sharding.py)
    activation_checkpointing: bool = False


@dataclass
class DataSchema:
    batch_size: int
    num_workers: int
    # null: found in the data's files when they are read, before the model is built (data=csv).
    input_shape: Optional[list[int]]
    num_outputs: Optional[int]
    # Makes a batch of a DataLoader's samples: {_target_: module.function, _partial_: true} (null: stack them).
    collate_fn: Optional[Any] = None
    # Image data only; others declare input_shape alone.
    in_channels: Optional[int] = None
    num_classes: Optional[int] = None
    image_size: Optional[int] = None
    # Optional: a config stored by an older version of the template declared `input` and `target` beside
    # its other keys (csv's `target` is the column to predict).
    # What the samples are and where they come from: input, target, source and example (checked below).
    declares: Optional[Any] = None


@dataclass
class MlflowSchema:  # board/mlflow_tracker.py; null: MLflow's own environment variables
    tracking_uri: Optional[str] = None
    experiment_name: Optional[str] = None


@dataclass
class WandbSchema:  # board/wandb_tracker.py; null: W&B's own environment variables
    project: Optional[str] = None
    entity: Optional[str] = None
    group: Optional[str] = None
    mode: Optional[str] = None
    dir: Optional[str] = None


@dataclass
class LoggingSchema:
    graph: bool
    every_n_steps: int
    progress_bar: bool
    images: bool
    histograms_every_n_epochs: int
    lr_per_group: bool
    trackers: list[str] = field(default_factory=list)  # board/trackers.py: what is known, and installed
    tracker_artifacts: bool = True
    mlflow: MlflowSchema = field(default_factory=MlflowSchema)
    wandb: WandbSchema = field(default_factory=WandbSchema)


SCHEMAS = {"trainer": TrainerSchema, "data": DataSchema, "logging": LoggingSchema}
# Groups whose every key the template reads: anything else there is a typo or a key that does nothing.
CLOSED = {
    "trainer": TrainerSchema,
    "logging": LoggingSchema,
    "paths": ("output_root", "multirun_root", "data_dir"),
    "param_groups": ("no_decay_norm_and_bias", "by_name", "backbone_lr_scale"),
}
TOP_LEVEL = ("model", "data", "task", "optimizer", "scheduler", "trainer", "logging", "paths", "name", "resume",
             "allowed_targets", "init_from", "init_strict", "init_from_map", "tags", "declares",
             "param_groups")  # fmt: skip

CHOICES = {"trainer.device": ("auto", "cpu", "cuda"), "trainer.precision": ("32", "bf16", "16"),
           "trainer.strategy": ("ddp", "fsdp")}  # fmt: skip
# (key, lowest allowed, what the lowest means) for numbers; None values (off) are always allowed.
RANGES = (
    ("trainer.max_epochs", 1, None),
    ("trainer.max_steps", 1, None),
    ("trainer.limit_batches", 1, None),
    ("trainer.accumulate_grad_batches", 1, None),
    ("trainer.val_every_n_epochs", 1, None),
    ("trainer.checkpoint_every_n_steps", 1, None),
    ("trainer.keep_step_checkpoints", 1, None),
    ("trainer.seed", 0, None),
    ("trainer.val_every_n_steps", 1, None),
    ("trainer.limit_val_batches", 1, None),
    ("trainer.limit_test_batches", 1, None),
    ("trainer.early_stopping.patience", 1, None),
    ("trainer.early_stopping.min_delta", 0, None),
    ("trainer.overfit_batches", 1, None),
    ("trainer.profile_steps", 1, None),
    ("trainer.freeze_backbone_epochs", 0, "off"),
    ("data.batch_size", 1, None),
    ("data.num_workers", 0, None),
    ("data.num_outputs", 1, None),
    ("data.in_channels", 1, None),
    ("data.num_classes", 1, None),
    ("data.image_size", 1, None),
    ("logging.every_n_steps", 1, None),
    ("logging.histograms_every_n_epochs", 0, "off"),
    ("scheduler.warmup_steps", 0, None),
    ("scheduler.step_size", 1, None),
    ("optimizer.weight_decay", 0, None),
)
# Strictly positive, finite floats (inf passes `> 0` and would train to a non-finite loss).
POSITIVE = ("trainer.grad_clip", "optimizer.lr")
SEED_LIMIT = 2**32 - 1  # numpy's seed range


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad key; convert values in place (e.g. precision 16 -> "16")."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing value{'s' if len(missing) > 1 else ''} (???) for {', '.join(missing)}: set "
            f"{'them' if len(missing) > 1 else 'it'} on the command line, e.g. {missing[0]}=..."
        )
    _check_unknown_keys(cfg)
    check_declares(cfg)
    _check_param_groups(cfg)
    for group, schema in SCHEMAS.items():
        node = cfg[group]
        names = [f.name for f in fields(schema) if f.name in node]
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), {k: node[k] for k in names})
        except OmegaConfBaseException as err:
            key = str(getattr(err, "full_key", None) or getattr(err, "key", "?"))
            first = str(err).splitlines()[0]
            raise ConfigError(
                f"{key if key.startswith(group + '.') else f'{group}.{key}'}: {first}"
            ) from None
        for f in fields(schema):
            if f.name in node:
                node[f.name] = typed[f.name]
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{group}.{f.name} is missing: the {group} config must declare it")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if str(value) not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    for key, lowest, meaning in RANGES:
        value = _number(cfg, key)
        if value is not None and value < lowest:
            bound = f"{lowest} ({meaning}) or more" if meaning else f"at least {lowest}"
            raise ConfigError(f"{key}={value} must be {bound}")
    for key in POSITIVE:
        value = _number(cfg, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{key}={value} must be greater than 0")
        if value is not None and math.isinf(value):
            raise ConfigError(f"{key}={value} must be a finite number")
    ema = cfg.trainer.get("ema_decay")
    if ema is not None and not 0 < ema < 1:
        raise ConfigError(f"trainer.ema_decay={ema} must be between 0 and 1, e.g. 0.999 (null: off)")
    _check_fsdp(cfg)
    if cfg.trainer.seed > SEED_LIMIT:
        raise ConfigError(f"trainer.seed={cfg.trainer.seed} must be at most {SEED_LIMIT}")
    parse_max_time(cfg.trainer.max_time)  # one line for a malformed budget
    if cfg.get("init_from") and cfg.get("resume"):
        raise ConfigError("init_from starts a new run from weights, resume continues one: give only one")
    if not isinstance(cfg.get("init_strict", True), bool):
        raise ConfigError(f"init_strict={cfg.init_strict!r} must be true or false")
    prefixes = cfg.get("init_from_map") or {}
    if not isinstance(prefixes, (dict, DictConfig)) or any(not isinstance(v, str) for v in prefixes.values()):
        raise ConfigError(
            f"init_from_map={prefixes} must map prefixes to prefixes, e.g. {{encoder.: features.}}"
        )
    if prefixes and not cfg.get("init_from"):
        raise ConfigError("init_from_map renames the keys of init_from's checkpoint: give init_from too")
    tags = cfg.get("tags") or []
    if not isinstance(tags, (list, ListConfig)) or any(not isinstance(x, (str, int, float)) for x in tags):
        raise ConfigError(f"tags={tags} must be a list of words, e.g. tags=[baseline,lr_sweep]")
    trackers.check(cfg.logging)  # each one known and installed, before anything is built
    shape = cfg.data.input_shape  # null: found in the data's files when they are read (data=csv)
    if shape is not None and (not shape or any(not isinstance(d, int) or d < 1 for d in shape)):
        raise ConfigError(f"data.input_shape={list(shape)} must list positive sizes")


def _check_fsdp(cfg: DictConfig) -> None:
    """What FSDP's shards cannot do (each needs the whole weights on rank 0 alone, or an unsharded scaler)."""
    t, lg = cfg.trainer, cfg.logging
    for key, bad, why in (
        ("trainer.ema_decay", t.get("ema_decay") is not None, "the average is a whole copy of the weights on every rank"),
        ("trainer.precision=16", str(t.precision) == "16", "fp16's GradScaler does not unscale sharded gradients; use bf16"),
        ("logging.graph", bool(lg.get("graph")), "tracing the graph runs the model on rank 0 alone"),
        ("logging.histograms_every_n_epochs", bool(lg.get("histograms_every_n_epochs")), "each rank holds a shard"),
    ):  # fmt: skip
        if bad and t.get("strategy", "ddp") == "fsdp":
            raise ConfigError(f"{key} cannot be used with trainer.strategy=fsdp: {why}")


# trainer.max_time (loop/timebudget.py counts it down).
ACCEPTED = 'HH:MM:SS, DD:HH:MM:SS or minutes (e.g. "02:30:00", "1:00:00:00", 90, 0.5); null: no limit'
_CLOCK = re.compile(r"\d+(:\d+){2,3}", re.ASCII)


def parse_max_time(value) -> float | None:
    """Seconds of the budget, or None for no limit. Raises ConfigError naming trainer.max_time."""
    if value is None:
        return None

    def bad(why: str = "") -> ConfigError:
        return ConfigError(f"trainer.max_time={value!r}{why} must be {ACCEPTED}")

    if isinstance(value, bool):
        raise bad()
    if isinstance(value, (int, float)):
        minutes = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _CLOCK.fullmatch(text):
            parts = [int(p) for p in text.split(":")]
            days, hours, minutes_, seconds = parts if len(parts) == 4 else [0, *parts]
            if minutes_ >= 60 or seconds >= 60 or (len(parts) == 4 and hours >= 24):
                raise bad(" (hours < 24 with days, minutes and seconds < 60)")
            total = ((days * 24 + hours) * 60 + minutes_) * 60 + seconds
            if total <= 0:
                raise bad(" (zero)")
            return float(total)
        try:
            minutes = float(text)
        except ValueError:
            raise bad() from None
    else:
        raise bad()
    if not math.isfinite(minutes) or minutes <= 0:
        raise bad(" (minutes > 0)")
    return minutes * 60.0


def _missing_keys(node, prefix: str = ""):
    """The `???` values a user must still set, found without resolving anything (an interpolation that
    points at one would otherwise fail first, naming the key that points instead of the one to set)."""
    keys = range(len(node)) if isinstance(node, ListConfig) else node.keys()
    for key in keys:
        full = f"{prefix}[{key}]" if isinstance(node, ListConfig) else f"{prefix}{'.' if prefix else ''}{key}"
        if OmegaConf.is_missing(node, key):
            yield full
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], (DictConfig, ListConfig)):
            yield from _missing_keys(node[key], full)


def _number(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number") from None
    return value


def _check_unknown_keys(cfg: DictConfig) -> None:
    for key in cfg:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key} is not a config key this template reads{did_you_mean(key, TOP_LEVEL)}")
    for group, known in CLOSED.items():
        names = [f.name for f in fields(known)] if isinstance(known, type) else list(known)
        for key in cfg.get(group) or {}:
            if key not in names:
                full = [f"{group}.{n}" for n in names]
                raise ConfigError(
                    f"{group}.{key} is not a config key this template reads{did_you_mean(f'{group}.{key}', full)}"
                )


def _check_param_groups(cfg: DictConfig) -> None:
    """The optimizer's parameter groups (optim/params.py reads them), shaped right before anything is
    built; what their patterns match and which options the optimizer has are checked once the model and
    the optimizer are."""
    node = cfg.get("param_groups")  # a config stored before parameter groups has none
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(f"param_groups={_plain(node)!r} must be a mapping: by_name, no_decay_norm_and_bias")
    flag = node.get("no_decay_norm_and_bias", False)
    if not isinstance(flag, bool):
        raise ConfigError(f"param_groups.no_decay_norm_and_bias={_plain(flag)!r} must be true or false")
    scale = _number(cfg, "param_groups.backbone_lr_scale")
    if scale is not None and not (math.isfinite(scale) and scale >= 0):
        raise ConfigError(
            f"param_groups.backbone_lr_scale={scale} must be a finite number, at least 0 (null: off)"
        )
    by_name = node.get("by_name")
    one = "{params: 'backbone.*', lr: 1.0e-4}"
    if by_name is not None and not isinstance(by_name, ListConfig):
        raise ConfigError(f"param_groups.by_name={_plain(by_name)!r} must be a list of groups, e.g. [{one}]")
    for k, group in enumerate(by_name or []):
        key = f"param_groups.by_name[{k}]"
        if not isinstance(group, DictConfig) or "params" not in group:
            raise ConfigError(
                f"{key}={_plain(group)!r} must be a mapping with params (name patterns), e.g. {one}"
            )
        patterns = group.params
        names = [patterns] if isinstance(patterns, str) else patterns
        if (
            not isinstance(names, (ListConfig, list))
            or not names
            or not all(isinstance(p, str) and p for p in names)
        ):
            raise ConfigError(
                f"{key}.params={_plain(patterns)!r} must be a name pattern or a list of them, e.g. {one}"
            )
        for option, lowest in (("lr", None), ("weight_decay", 0)):
            value = _number(cfg, f"{key}.{option}")
            if value is None:
                continue
            if not math.isfinite(value) or (value <= 0 if lowest is None else value < lowest):
                bound = "greater than 0" if lowest is None else f"at least {lowest}"
                raise ConfigError(f"{key}.{option}={value} must be a finite number {bound}")


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def plain(node: DictConfig) -> SimpleNamespace:
    """A config group as plain Python attributes, resolved: for code that reads values in a hot loop."""
    return SimpleNamespace(**OmegaConf.to_container(node, resolve=True))
