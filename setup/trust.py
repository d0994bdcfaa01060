"""A config stored in a checkpoint or a run directory is data, never code.

`python eval.py ckpt=F`, `resume=` and the like rebuild the model from the config inside the checkpoint.
Hydra's `instantiate` calls whatever `_target_` names, so a crafted checkpoint could name `torch.load`,
`pathlib.Path.write_text`, or a helper of the project's own such as `data.csv.write_example` (it writes
files wherever its `directory` says). Before anything is built from a stored config:

- it is a bounded tree of plain data (`bounded` below: depth, node count; a file read from disk also its
  size and no YAML anchors): a small file whose shared parts repeat 2^40 times must not hang its reader;
- every `_target_` sits in a group that the code builds (GROUPS: model, task, data.dataset, ...) and names a
  constructor of that group, from the group's own modules: a torch.nn.Module for `model`, a Task for
  `task`, a function returning Splits for `data.dataset`, an Optimizer for `optimizer`, a schedule for
  `scheduler`, a `collate` function for `data.collate_fn`. What the name resolves to is checked, not its
  spelling (`models.resnet.torch.load` is refused), and so is the kind of callable, so that no helper of an
  allowed module (an example writer, a renderer) can be called. A project adds its own modules with the
  `allowed_targets` key of its *own* config (never of the stored one); their callables must be of the
  group's kind too. A fork that builds another group from the config adds it to GROUPS;
- `_partial_: true` only where the code calls the result later (optimizer, scheduler, collate_fn);
- no string in it may hold `${` (an interpolation, which could call a resolver: `oc.env` reads a secret,
  `run_dir` creates directories), in any spelling (`\\${...}`, a value that is `${` only after a later
  resolve): a checkpoint stores its config resolved, so a real one holds none, and a config that holds none
  stays inert through every later resolve, `to_container`, merge or `instantiate`, however often the code
  turns it into containers and back. Escaped text is not enough there: `instantiate` and the first
  `to_container(resolve=True)` unescape it, and the next resolve makes it live again. The one exception is
  data found in the user's files (a CSV's class names, `data.found_in_files`): it is stored escaped
  (`literal()`), nothing is ever built from those keys, and it reads back as the text it was.

`literal()` is the escape for the other direction: resolved values put back into a config (train.py's
`build()`, a checkpoint's config) stay the values they were.

No torch at import: `_locate` imports only modules that the group's list already names.
"""

from __future__ import annotations

import builtins
import inspect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from setup.config import ConfigError

# What a stored config may be, at most: far above any real run's config (a few hundred nodes, depth 6),
# far below what would hang the machine that reads it.
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_FILE_BYTES = 1 << 20  # a run's .hydra/config.yaml is a few KB


def _nn_module(obj) -> bool:
    import torch

    return _subclass(obj, torch.nn.Module) or _subclass(_return_type(obj), torch.nn.Module, itself=True)


def _task(obj) -> bool:
    from tasks.base import Task

    return _subclass(obj, Task)


def _dataset(obj) -> bool:
    from data.splits import Splits

    return inspect.isfunction(obj) and _subclass(_return_type(obj), Splits, itself=True)


def _collate(obj) -> bool:
    return inspect.isfunction(obj) and (obj.__name__ == "collate" or obj.__name__.startswith("collate_"))


def _optimizer(obj) -> bool:
    import torch

    return _subclass(obj, torch.optim.Optimizer)


def _schedule(obj) -> bool:
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    kinds = (LRScheduler, ReduceLROnPlateau)  # the plateau schedule is no LRScheduler in older torch
    return any(_subclass(obj, k) or _subclass(_return_type(obj), k, itself=True) for k in kinds)


def _subclass(obj, kind: type, itself: bool = False) -> bool:
    """A class derived from `kind` (the base itself only where `itself`: a function may return it)."""
    return inspect.isclass(obj) and issubclass(obj, kind) and (itself or obj is not kind)


_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _return_type(fn):
    """The class a function's return annotation names (`-> nn.Module`, `-> Splits`), or None. Under
    `from __future__ import annotations` it is text: a dotted name is looked up in the function's module,
    never evaluated."""
    if not inspect.isfunction(fn):
        return None
    found = fn.__annotations__.get("return")
    if isinstance(found, str):
        if not _NAME.fullmatch(found):
            return None  # list[str], a union: no single class
        head, *rest = found.split(".")
        found = fn.__globals__.get(head, getattr(builtins, head, None))
        for part in rest:
            found = getattr(found, part, None)
    return found if inspect.isclass(found) else None


@dataclass(frozen=True)
class Group:
    """Where a stored config builds something: the modules its constructors come from, the kind of callable
    a constructor of it is (`accepts`, described by `kind`), and whether the code calls the result later
    with the run's objects (`_partial_: true`: the optimizer gets the parameters)."""

    modules: tuple[str, ...]
    kind: str
    accepts: Callable[[object], bool]
    partial: bool = False


GROUPS = {
    "model": Group(("models",), "a torch.nn.Module class, or a function annotated -> nn.Module", _nn_module),
    "task": Group(("tasks",), "a subclass of tasks.base.Task", _task),
    "data.dataset": Group(("data",), "a function annotated -> data.splits.Splits", _dataset),
    "data.collate_fn": Group(("data",), "a function named collate or collate_*", _collate, partial=True),
    "optimizer": Group(("torch.optim",), "a torch.optim.Optimizer class", _optimizer, partial=True),
    "scheduler": Group(
        ("torch.optim.lr_scheduler", "optim.schedulers"),
        "an LRScheduler class, or a function annotated to return one",
        _schedule,
        partial=True,
    ),
}
# Every module a stored config may name a callable of (each within its groups only).
ALLOWED_TARGETS = tuple(dict.fromkeys(m for g in GROUPS.values() for m in g.modules))


def _allowed(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def group_of(path: str) -> str | None:
    """The group a node at `path` (`model`, `model.encoder`, `data.dataset`) is built in, or None."""
    inside = [g for g in GROUPS if path == g or path.startswith((g + ".", g + "["))]
    return max(inside, key=len) if inside else None


def check_target(target: object, key: str, group: str, extra: Iterable[str] = ()) -> None:
    """Refuse a `_target_` that is not a constructor of `group`: by its text, by the module of what it
    resolves to, and by the kind of callable that is. Each refusal is one line (ConfigError)."""
    spec = GROUPS[group]
    prefixes = (*spec.modules, *(str(t) for t in extra))
    name = str(target)
    allowed = f"{group} is built from {', '.join(p + '.*' for p in prefixes)}"
    if not isinstance(target, str) or not _allowed(name, prefixes):
        raise ConfigError(
            f"stored config refused: {key}={name!r} is not an allowed target ({allowed}; add a trusted "
            "module with allowed_targets=[...])"
        )
    from hydra._internal.utils import _locate

    try:
        obj = _locate(name)
    except Exception as err:  # ImportError, AttributeError, ValueError: the name is not there
        raise ConfigError(
            f"stored config refused: {key}={name!r} cannot be found ({type(err).__name__})"
        ) from None
    module = getattr(obj, "__module__", None) or ""
    if not _allowed(module, prefixes):
        raise ConfigError(
            f"stored config refused: {key}={name!r} resolves to {module}.{getattr(obj, '__qualname__', '?')}, "
            f"outside the allowed targets ({allowed})"
        )
    if not spec.accepts(obj):
        raise ConfigError(
            f"stored config refused: {key}={name!r} is no constructor of {group}: that is {spec.kind}"
        )


def bounded(value, what: str, leaf: Callable[[object], bool] | None = None) -> None:
    """Refuse a tree deeper than MAX_DEPTH or of more than MAX_NODES nodes, counting a part shared by
    several parents each time it is reached (as any reader walking it would): a few KB of shared lists
    doubled 40 times are 2^40 nodes to a reader. `leaf`, when given, says which leaves are allowed."""
    stack, nodes = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{what} has more than {MAX_NODES} values: refused unread")
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            if leaf is not None and not leaf(node):
                raise ConfigError(f"{what}: a value of type {type(node).__name__} is not plain data")
            continue
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{what} is nested more than {MAX_DEPTH} levels deep: refused unread")
        stack.extend((child, depth + 1) for child in children)


def _plain_leaf(value) -> bool:
    return value is None or isinstance(value, (str, bool, int, float))


def read_stored_config(path: str | os.PathLike) -> object:
    """A run's stored YAML config (.hydra/config.yaml) as plain containers, read with bounds, before
    anything resolves it: at most MAX_FILE_BYTES, no anchors or aliases (`&a`, `*a`: Hydra writes none, and
    nested ones make a small file billions of nodes), at most MAX_DEPTH deep and MAX_NODES nodes. Raises
    ConfigError (or OSError, yaml.YAMLError) in one line; the caller names the file."""
    import yaml

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"it is {size:,} bytes, more than a stored config may be ({MAX_FILE_BYTES:,})")
    text = path.read_text()
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            line = event.start_mark.line + 1
            raise ConfigError(
                f"line {line} holds a YAML anchor or alias (& or *): a stored config holds none"
            )
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            too = f"nested more than {MAX_DEPTH} levels deep" if depth > MAX_DEPTH else (
                f"more than {MAX_NODES:,} values")  # fmt: skip
            raise ConfigError(f"it is {too}: refused unread")
    return moved(yaml.safe_load(text))


def _check_plain(value, path: str, source: str, data_ok: frozenset = frozenset()) -> None:
    """Plain data only (no objects), and no `${` anywhere, in keys or values; under `data.<key>` for the
    keys in `data_ok` (what the data found in the user's files), escaped text that reads back as it was."""
    if isinstance(value, str):
        if "${" in value and not (_under(path, data_ok) and unliteral(value) is not None):
            raise ConfigError(
                f"stored config refused: {source}: {path or 'a key'} holds an interpolation ('${{'): a stored "
                "config is plain data, resolved when it was saved"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            key = f"{path}.{k}" if path else str(k)
            _check_plain(k if isinstance(k, str) else str(k), key, source)
            _check_plain(v, key, source, data_ok)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{path}[{i}]", source, data_ok)
    elif not _plain_leaf(value):
        raise ConfigError(f"stored config refused: a value of type {type(value).__name__} is not plain data")


def _under(path: str, keys: frozenset) -> bool:
    return any(path == k or path.startswith((k + ".", k + "[")) for k in keys)


def _found_keys(raw: dict) -> frozenset:
    """`data.<key>` for each key the data found in its files; never a node that is built (dataset,
    collate_fn), whatever a crafted `found_in_files` lists."""
    data = raw.get("data")
    found = data.get("found_in_files") if isinstance(data, dict) else None
    if not isinstance(found, list):
        return frozenset()
    built = {g.removeprefix("data.") for g in GROUPS if g.startswith("data.")}
    return frozenset(f"data.{k}" for k in found if isinstance(k, str) and k not in built and "${" not in k)


_INTERPOLATION = re.compile(r"(\\*)\$\{")


def literal(value):
    """Plain values (a resolved container) escaped for OmegaConf, so that a config made of them holds each
    string as it is: `${` becomes `\\${`, and the backslashes right before it are doubled (OmegaConf reads
    `\\\\${x}` as a backslash and then a live interpolation)."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m[1] * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value


def unliteral(text: str) -> str | None:
    """The text that `literal()` escaped into `text`, or None where `text` is no such escape (a `${` that
    OmegaConf would read as live: after an even number of backslashes)."""
    live = False

    def unescape(m: re.Match) -> str:
        nonlocal live
        live = live or len(m[1]) % 2 == 0
        return m[1][: len(m[1]) // 2] + "${"

    plain = _INTERPOLATION.sub(unescape, text)
    return None if live or literal(plain) != text else plain


def _nodes(tree, path: str = ""):
    """(path, node) for every mapping in the tree."""
    if isinstance(tree, dict):
        yield path, tree
        for k, v in tree.items():
            yield from _nodes(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _nodes(v, f"{path}[{i}]")


# Constructors that moved in the template, by their old module: a run stored before the move names them
# there (the schedules were utils/schedulers.py until 0.2.0), and resumes and evaluates under the new name.
MOVED = {"utils.schedulers.": "optim.schedulers."}


def moved(tree):
    """The tree with each `_target_` of MOVED renamed to where it is now (in place)."""
    for _, node in _nodes(tree):
        target = node.get("_target_")
        for old, new in MOVED.items():
            if isinstance(target, str) and target.startswith(old):
                node["_target_"] = new + target.removeprefix(old)
    return tree


def check_targets(raw: dict, source: str, extra_targets: Iterable[str] = ()) -> None:
    """Each `_target_` a constructor of the group it sits in; `_partial_: true` only where the code calls
    the result later (a model left partial would be no model: eval.py and load_trained need a module).
    A target of MOVED is renamed in place first."""
    moved(raw)
    for path, node in _nodes(raw):
        group = group_of(path)
        if "_target_" in node:
            key = f"{source}: {path}._target_"
            if group is None:
                raise ConfigError(
                    f"stored config refused: {key}: nothing is built there (a stored config builds "
                    f"{', '.join(GROUPS)})"
                )
            check_target(node["_target_"], key, group, extra_targets)
        partial = node.get("_partial_", False)
        if partial is not False and not (path == group and GROUPS[group].partial):
            where = ", ".join(g for g, spec in GROUPS.items() if spec.partial)
            raise ConfigError(
                f"stored config refused: {source}: {path}._partial_={partial!r}: only {where} are built "
                "partial, to be called later"
            )


def stored_config(raw: object, source: str, extra_targets: Iterable[str] = ()) -> DictConfig:
    """The config a checkpoint carries, checked: a bounded tree of plain data, constructors of their groups
    only, nothing resolved."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} holds no config")
    bounded(raw, f"stored config refused: {source}: its config", _plain_leaf)
    _check_plain(raw, "", source, _found_keys(raw))
    check_targets(raw, source, extra_targets or ())
    return OmegaConf.create(raw)
