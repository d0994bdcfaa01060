"""`init_from=PATH`: start a new run from another run's weights (fine-tuning), and nothing else of it.

PATH is a checkpoint file or a run directory (its checkpoints/best.pt, else last.pt). Only the model's
weights are taken: the new run has its own directory, optimizer, schedule and step 0, and the current
config. With `init_strict=true` every key and shape must match; with `init_strict=false` what fits is
loaded and the rest (a new head for another class count) keeps its fresh initialization, each kind of
difference named in one log line. `init_from_map={encoder.: features.}` renames the checkpoint's keys by
prefix first (another model's module names: a pretrained encoder into a classifier's body); a prefix that
renames nothing is an error, not a silent fresh start.

Call it on the plain model (not wrapped by DDP or torch.compile), after one batch went through it (lazy
modules take their shapes then; until they do, a changed head could not be told from a fitting one).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from store.checkpoint import CheckpointError, read_checkpoint
from system.layout import checkpoint_to_evaluate

SHOWN = 5  # names per log line before "... and N more"


def initial_weights_path(path: str | os.PathLike) -> Path:
    """The checkpoint file that `init_from=path` means (system/layout.py: a run directory's best.pt,
    else last.pt)."""
    file = checkpoint_to_evaluate(path)
    if file is None:
        raise CheckpointError(
            f"init_from={path}: a directory without checkpoints/best.pt or checkpoints/last.pt"
        )
    if not file.exists():
        raise CheckpointError(f"init_from={path} does not exist")
    return file


def _shape(t) -> tuple[int, ...] | None:
    """The shape of a tensor; None for a lazy (not yet materialized) parameter or a non-tensor entry (a
    module's extra state)."""
    if not isinstance(t, torch.Tensor) or torch.nn.parameter.is_lazy(t):
        return None
    return tuple(t.shape)


def renamed(weights: dict, prefixes: dict, own: dict, file: Path) -> tuple[dict, dict[str, int]]:
    """The checkpoint's weights with each key's longest matching prefix of `prefixes` (init_from_map)
    replaced, and how many keys each prefix renamed. Raises CheckpointError for a prefix that matches no key
    of the checkpoint, or whose renamed keys match none of the model's."""
    order = sorted(prefixes, key=len, reverse=True)
    counts, out = dict.fromkeys(prefixes, 0), {}
    for key, value in weights.items():
        old = next((p for p in order if key.startswith(p)), None)
        if old is not None:
            counts[old] += 1
            key = prefixes[old] + key[len(old) :]
        out[key] = value
    for old, new in prefixes.items():
        if not counts[old]:
            has = _names(list(weights), "keys")
            raise CheckpointError(f"init_from_map: no key of {file} starts with {old!r} (it has {has})")
        if not any(k.startswith(new) for k in own):
            raise CheckpointError(
                f"init_from_map: {old!r} -> {new!r}, but no key of this model starts with {new!r} "
                f"(it has {_names(list(own), 'keys')})"
            )
    return out, counts


def load_initial_weights(
    model: torch.nn.Module, path: str | os.PathLike, strict: bool, prefixes: dict | None = None
) -> dict:
    """Load the weights of the checkpoint that `path` names into `model`, their keys renamed by `prefixes`
    (init_from_map: {checkpoint prefix: model prefix}).

    Returns {"path", "missing", "unexpected", "skipped": [(name, ckpt_shape, model_shape)], "loaded",
    "renamed": [(old prefix, new prefix, count)]}. Raises CheckpointError (one line) for a file that is no
    checkpoint, a prefix that renames nothing, any difference when strict, and when not a single tensor
    fits."""
    lazy = [k for k, t in model.state_dict().items() if _shape(t) is None and isinstance(t, torch.Tensor)]
    if lazy:
        raise ValueError(
            f"load_initial_weights: {lazy[0]} is not materialized yet: run one batch through the model first"
        )
    file = initial_weights_path(path)
    theirs = read_checkpoint(file).model_weights
    own = model.state_dict()
    prefixes = dict(prefixes or {})
    theirs, counts = renamed(theirs, prefixes, own, file)
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    skipped = []
    for k, t in own.items():
        if k in theirs:
            mine, saved = _shape(t), _shape(theirs[k])
            if mine is not None and saved is not None and mine != saved:
                skipped.append((k, saved, mine))
    result = {"path": str(file), "missing": missing, "unexpected": unexpected, "skipped": skipped,
              "renamed": [(old, prefixes[old], n) for old, n in counts.items()]}  # fmt: skip
    if strict and (missing or unexpected or skipped):
        raise CheckpointError(
            f"init_from={path}: {file} does not fit this {type(model).__name__}: {_differences(result)}; "
            "use init_strict=false to load what fits (e.g. a new head for another class count)"
        )
    bad = {k for k, *_ in skipped}
    fitting = {k: v for k, v in theirs.items() if k in own and k not in bad}
    if own and not fitting:
        raise CheckpointError(
            f"init_from={path}: none of the {len(theirs)} tensors in {file} fits this {type(model).__name__} "
            f"({_differences(result)}): is it a checkpoint of another model?"
        )
    model.load_state_dict(fitting, strict=False)
    result["loaded"] = len(fitting)
    return result


def _names(items: list, what: str) -> str:
    shown = ", ".join(items[:SHOWN])
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{len(items)} {what} ({shown}{more})"


def _skipped_text(skipped: list) -> list[str]:
    return [f"{k} {list(saved)} in the checkpoint, {list(mine)} here" for k, saved, mine in skipped]


def _differences(result: dict) -> str:
    parts = []
    if result["missing"]:
        parts.append(_names(result["missing"], "missing"))
    if result["unexpected"]:
        parts.append(_names(result["unexpected"], "unexpected"))
    if result["skipped"]:
        parts.append(_names(_skipped_text(result["skipped"]), "of another shape"))
    return "; ".join(parts) or "no differences"


def log_summary(result: dict, log) -> None:
    """One info line for what was loaded, and at most one warning line each for the missing, unexpected
    and skipped keys."""
    total = result["loaded"] + len(result["missing"]) + len(result["skipped"])
    renames = ", ".join(f"{n} {old}* as {new}*" for old, new, n in result.get("renamed", []))
    log.info(
        "init_from: loaded %d of this model's %d tensors from %s%s",
        result["loaded"],
        total,
        result["path"],
        f" (renamed: {renames})" if renames else "",
    )
    if result["missing"]:
        log.warning(
            "init_from: %s: they keep their fresh initialization", _names(result["missing"], "missing keys")
        )
    if result["unexpected"]:
        log.warning(
            "init_from: %s: in the checkpoint, not in this model; ignored",
            _names(result["unexpected"], "unexpected keys"),
        )
    if result["skipped"]:
        log.warning(
            "init_from: %s: skipped, they keep their fresh initialization",
            _names(_skipped_text(result["skipped"]), "keys of another shape"),
        )
