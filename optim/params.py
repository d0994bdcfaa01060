"""The optimizer's parameter groups: which parameters it updates, with which options. train.py and the
benchmark build their optimizer over `param_groups` (through setup/parts.py's `build_optimizer`), so a
rule added here is what both train.

Two places, one per kind of rule:
- the config's `param_groups` node (conf/train.yaml), for rules by name. `param_groups.by_name` is a list
  of `{params: <pattern or list of patterns>, <option>: <value>, ...}`: a parameter whose name (as
  `model.named_parameters()` gives it) matches a pattern (fnmatch: `backbone.*`) goes in that group, with
  those options (`lr`, `weight_decay`, or any other option of the optimizer); the parameters no group
  names keep the optimizer config's options, in the first group. `param_groups.no_decay_norm_and_bias=true`
  then takes the weight decay off every 1-D parameter (biases, norm layers' weights) of each group.
  `param_groups.backbone_lr_scale=0.1` (fine-tuning) splits each group first into the model's new head
  (the parameters that its `head_prefixes` name) and its backbone, whose lr is the group's times 0.1.
- `param_groups` below, for a rule that a name cannot say (by module type, a layer-wise lr decay): it
  returns the groups as torch.optim takes them.

The optimizer config (conf/optimizer/) stays what its constructor takes, whole, as `instantiate` expects.
Left as shipped (no groups, no_decay_norm_and_bias off) this is one group of `model.parameters()`, as the
template always built it: checkpoints and resumes are unchanged.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from omegaconf import DictConfig, OmegaConf

from system.errors import ConfigError


def param_groups(model: torch.nn.Module, cfg: DictConfig) -> list[dict]:
    """The optimizer's parameter groups for `model` from the run's config: a list of
    `{"params": [...], <option>: value}`, every parameter in exactly one. A pattern that matches no
    parameter, or a parameter that two groups take, is a ConfigError naming the group."""
    node = cfg.get("param_groups") or {}  # a config stored before parameter groups has none
    by_name = OmegaConf.to_container(node.by_name, resolve=True) if node.get("by_name") else []
    no_decay = bool(node.get("no_decay_norm_and_bias", False))
    scale = node.get("backbone_lr_scale")
    if not by_name and not no_decay and scale is None:
        return [{"params": list(model.parameters())}]  # what the optimizer got before groups existed
    named = list(model.named_parameters())
    owner: dict[str, int] = {}  # parameter name -> the index of the group that takes it
    for k, group in enumerate(by_name):
        patterns = [group["params"]] if isinstance(group["params"], str) else group["params"]
        for pattern in patterns:
            hits = [name for name, _ in named if fnmatchcase(name, pattern)]
            if not hits:
                raise ConfigError(
                    f"param_groups.by_name[{k}].params: {pattern!r} matches no parameter of "
                    f"{type(model).__name__} ({_some(named)})"
                )
            for name in hits:
                if owner.get(name, k) != k:
                    raise ConfigError(
                        f"param_groups.by_name[{owner[name]}] and param_groups.by_name[{k}] both take "
                        f"{name}: a parameter is in one group"
                    )
                owner[name] = k
    options = [{}] + [{key: v for key, v in g.items() if key != "params"} for g in by_name]
    groups = [{"params": [], **o} for o in options]  # 0: the parameters no group takes
    for name, p in named:
        groups[owner[name] + 1 if name in owner else 0]["params"].append(p)
    if scale is not None:  # fine-tuning: each group's backbone part at its lr times the scale
        head = {id(p) for _, p in head_and_backbone(model)[0]}
        base = cfg.optimizer.get("lr")
        groups = [
            part
            for g in groups
            for part in (
                {**g, "params": [p for p in g["params"] if id(p) in head]},
                {
                    **g,
                    "params": [p for p in g["params"] if id(p) not in head],
                    "lr": g.get("lr", base) * scale,
                },
            )
        ]
    if no_decay:  # nanoGPT's rule: matrices (linear, convolution, embedding weights) decay, vectors do not
        groups = [
            part
            for g in groups
            for part in (
                {**g, "params": [p for p in g["params"] if p.dim() >= 2]},
                {**g, "params": [p for p in g["params"] if p.dim() < 2], "weight_decay": 0.0},
            )
        ]
    return [g for g in groups if g["params"]]


def head_and_backbone(model: torch.nn.Module) -> tuple[list, list]:
    """The model's new head and the rest, its backbone, as (name, parameter) lists: the head is the
    parameters whose names start with one of `model.head_prefixes` (the convention a model declares:
    docs/tasks.md). A model that declares none, or whose prefixes name nothing, is a ConfigError."""
    prefixes = tuple(getattr(model, "head_prefixes", None) or ())
    named = list(model.named_parameters())
    head = [(n, p) for n, p in named if prefixes and n.startswith(prefixes)]
    if not head:
        raise ConfigError(
            f'{type(model).__name__} declares no head: set `model.head_prefixes = ("fc.",)` (the prefixes of '
            f"its new layers' parameter names, {_some(named)}) where it is built, to fine-tune its backbone apart"
        )
    return head, [(n, p) for n, p in named if not n.startswith(prefixes)]


def check_options(optimizer: torch.optim.Optimizer, cfg: DictConfig) -> None:
    """Each option a group of param_groups.by_name sets is one the optimizer has: torch keeps an unknown
    key in its group without a word, so a typo (`weight_deacy`) would silently change nothing."""
    for k, group in enumerate(OmegaConf.select(cfg, "param_groups.by_name", default=None) or []):
        unknown = [key for key in group if key != "params" and key not in optimizer.defaults]
        if unknown:
            raise ConfigError(
                f"param_groups.by_name[{k}].{unknown[0]} is not an option of {type(optimizer).__name__} "
                f"(its options: {', '.join(optimizer.defaults)})"
            )


def _some(named, most: int = 6) -> str:
    names = [name for name, _ in named]
    more = f", ... ({len(names)} in all)" if len(names) > most else ""
    return "its parameters: " + ", ".join(names[:most]) + more
