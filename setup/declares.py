"""What the parts declare, and which words pair them: a model's input kinds and output, a task's target,
output and batch layout, a data config's source. The tests, copier (.copier/parts.jinja) and the check
before training pair task, data and model by these; here is their shape, checked with the one schema
(setup/config.py check_config). No torch here."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from system.errors import ConfigError, did_you_mean

# What a model and a task config declare, under `declares.model` and `declares.task` (beside the group's
# node, so that `instantiate(cfg.model)` never sees them): the data's input kinds a model takes (a list)
# and the output it gives (and `extra`: the optional extra of pyproject it needs, e.g. timm); the data's
# target a task reads and the model output it needs. Another group
# may declare what it likes under `declares.<group>`: the template reads only these.
# Where a data config's samples come from (data.declares.source): no download and no files, fetched when
# online, or the user's files.
SOURCES = ("builtin", "download", "files")
DECLARES = {"model": ("input", "output", "extra"), "task": ("target", "output")}
# And the batch's layout a task reads, as the data declares its own (data.declares.batch): `tuple` unless
# said (the template's (inputs, targets) and (tokens,)), e.g. `fields` for a dict batch.
PAIRING = {"model": DECLARES["model"], "task": (*DECLARES["task"], "batch")}
BATCH = "tuple"
# A task that is a worked example (`declares.task.worked_example: true`: docs/tasks.md) is offered by copier
# but not chosen by default, with the parts that only it uses; the tests treat it like any other part.
FLAGS = {"task": ("worked_example",)}


def check_declares(cfg: DictConfig) -> None:
    """`declares.<group>` for groups of this config only, the template's keys only for the model and the
    task (a typo there would silently turn the check before training off), each a word (a model's input:
    a list of words)."""
    source = OmegaConf.select(cfg, "data.declares.source", default=None)
    if source is not None and source not in SOURCES:
        raise ConfigError(f"data.declares.source={source!r} is not one of: {', '.join(SOURCES)}")
    declares = cfg.get("declares")
    if declares is None:
        return
    if not isinstance(declares, DictConfig):
        raise ConfigError(f"declares={declares!r} must map config groups to what they declare")
    groups = [k for k in cfg if k != "declares" and isinstance(cfg.get(k), DictConfig)]
    for group, node in declares.items():
        if group not in groups:
            near = did_you_mean(f"declares.{group}", [f"declares.{g}" for g in groups])
            raise ConfigError(f"declares.{group} names no config group{near}")
        if not isinstance(node, DictConfig):
            raise ConfigError(f"declares.{group}={node!r} must be a mapping, e.g. {{output: vector}}")
        for key, value in node.items() if group in PAIRING else ():
            full = f"declares.{group}.{key}"
            if key in FLAGS.get(group, ()):
                if not isinstance(value, bool):
                    raise ConfigError(f"{full}={plain_value(value)!r} must be true or false")
                continue
            if key not in PAIRING[group]:
                known = [f"declares.{group}.{k}" for k in (*PAIRING[group], *FLAGS.get(group, ()))]
                raise ConfigError(
                    f"{full} is not a config key this template reads{did_you_mean(full, known)}"
                )
            if key == "input":  # the input kinds a model takes
                ok = isinstance(value, ListConfig) and len(value) > 0
                ok = ok and all(isinstance(w, str) and w for w in value)
            else:
                ok = isinstance(value, str) and bool(value)
            if not ok:
                shape = "a list of words, e.g. [image]" if key == "input" else "a word, e.g. vector"
                raise ConfigError(f"{full}={plain_value(value)!r} must be {shape}")


def plain_value(value):
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
