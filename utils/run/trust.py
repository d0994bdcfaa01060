"""A config stored in a checkpoint is data, never code.

`python eval.py ckpt=F`, `resume=` and the like rebuild the model from the config inside the checkpoint.
Hydra's `instantiate` calls whatever `_target_` names, so a crafted checkpoint could name `torch.load`
or `pathlib.Path.write_text`. Before anything is built from a stored config:

- every `_target_` in it must name a callable of the project's own packages or of the libraries its
  shipped configs use (ALLOWED_TARGETS), checked by what the name resolves to, not by its spelling, so that
  `models.resnet.torch.load` is refused; a project extends the list with the `allowed_targets` key of its
  *own* config (never of the stored one);
- no string in it may hold `${` (an interpolation, which could call a resolver: `oc.env` reads a secret,
  `run_dir` creates directories), in any spelling (`\\${...}`, a value that is `${` only after a later
  resolve): a checkpoint stores its config resolved, so a real one holds none, and a config that holds none
  stays inert through every later resolve, `to_container`, merge or `instantiate`, however often the code
  turns it into containers and back. Keeping such a string as escaped text is not enough: the first
  `to_container(resolve=True)` unescapes it, and the next `OmegaConf.create` or merge makes it live again.

`literal()` is the escape for the other direction: resolved values put back into a config (train.py's
`build()`) stay the values they were.

No torch here: `_locate` imports only modules that the allowlist already names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from utils.config import ConfigError

# Module prefixes whose callables a stored config may name: what conf/ itself builds.
ALLOWED_TARGETS = ("models", "data", "tasks", "utils.schedulers", "torch.optim")


def _allowed(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_target(target: object, key: str, prefixes: Iterable[str]) -> None:
    """Refuse a `_target_` outside the allowlist, by its text and by the module of what it resolves to."""
    prefixes = tuple(prefixes)
    name = str(target)
    if not isinstance(target, str) or not _allowed(name, prefixes):
        raise ConfigError(
            f"stored config refused: {key}={name!r} is not an allowed target (allowed: "
            f"{', '.join(p + '.*' for p in prefixes)}; add a trusted one with allowed_targets=[...])"
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
            "outside the allowed targets"
        )


def _check_plain(value, path: str, source: str) -> None:
    """Plain data only (no objects), and no `${` anywhere, in keys or values."""
    if isinstance(value, str):
        if "${" in value:
            raise ConfigError(
                f"stored config refused: {source}: {path or 'a key'} holds an interpolation ('${{'): a stored "
                "config is plain data, resolved when it was saved"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            key = f"{path}.{k}" if path else str(k)
            _check_plain(k if isinstance(k, str) else str(k), key, source)
            _check_plain(v, key, source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{path}[{i}]", source)
    elif not (value is None or isinstance(value, (bool, int, float))):
        raise ConfigError(f"stored config refused: a value of type {type(value).__name__} is not plain data")


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


def _targets(tree, path: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "_target_":
                yield key, v
            yield from _targets(v, key)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _targets(v, f"{path}[{i}]")


def stored_config(raw: object, source: str, extra_targets: Iterable[str] = ()) -> DictConfig:
    """The config a checkpoint carries, checked: plain data, allowed targets only, nothing resolved."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} holds no config")
    _check_plain(raw, "", source)
    prefixes = (*ALLOWED_TARGETS, *(str(t) for t in extra_targets or ()))
    for key, target in _targets(raw):
        check_target(target, f"{source}: {key}", prefixes)
    return OmegaConf.create(raw)
