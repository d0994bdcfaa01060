"""Run-directory names: readable, safe to serve over HTTP, and unique even for runs started in the same second.

Hydra resolves `hydra.run.dir` through the `run_dir` resolver registered here. This module must stay free of
torch imports: it is loaded before Hydra parses the command line, so `train.py --help` stays fast.
"""

from __future__ import annotations

import os
import re
from datetime import datetime

from omegaconf import OmegaConf

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# One answer per (root, name) for the life of the process: Hydra resolves hydra.run.dir more than once.
_reserved: dict[tuple[str, str], str] = {}


def safe_name(text: str) -> str:
    """Reduce user text to letters, digits, '.', '_' and '-'.

    TensorBoard answers 400 for a run whose name holds a double quote, and shells trip on spaces, so
    anything else becomes '_'. Leading dots are dropped so a name can never be '..' or a hidden file.
    """
    return _UNSAFE.sub("_", str(text)).strip("_").lstrip(".") or "run"


def unique_run_dir(root: str, *parts: object) -> str:
    """Create and return `root/YYYY-MM-DD/HH-MM-SS_<parts>`, adding `-2`, `-3`, ... if it already exists.

    The directory is created here with mkdir (atomic), so two runs started in the same second can never
    share it. Hydra later calls makedirs(exist_ok=True) on it, which is then a no-op.
    """
    name = "_".join(safe_name(p) for p in parts if p not in (None, ""))
    key = (str(root), name)
    if key in _reserved:
        return _reserved[key]
    now = datetime.now()
    day = os.path.join(str(root), now.strftime("%Y-%m-%d"))
    os.makedirs(day, exist_ok=True)
    stem = now.strftime("%H-%M-%S") + (f"_{name}" if name else "")
    path, n = os.path.join(day, stem), 1
    while True:
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            n += 1
            path = os.path.join(day, f"{stem}-{n}")
    _reserved[key] = path
    return path


def is_run_dir(path) -> bool:
    """A directory that a run wrote: it holds .hydra/ or checkpoints/."""
    return bool(path) and any(
        os.path.isdir(os.path.join(str(path), sub)) for sub in (".hydra", "checkpoints")
    )


def resumable_run_dir(resume, root: str, *parts: object) -> str:
    """`resume=RUN_DIR` continues in RUN_DIR itself; otherwise a new directory, as unique_run_dir makes it.
    A `resume` path that is no run directory gets a new one, where train.py then reports the mistake."""
    return str(resume) if is_run_dir(resume) else unique_run_dir(root, *parts)


def unless_resuming(resume, value):
    """`value` for a new run, null when resuming: `${unless_resuming:${resume},.hydra}` keeps Hydra from
    writing the resumed run's fresh compose over the .hydra/ config that the run started with."""
    return None if is_run_dir(resume) else value


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", unique_run_dir)
    if not OmegaConf.has_resolver("resumable_run_dir"):
        OmegaConf.register_new_resolver("resumable_run_dir", resumable_run_dir, use_cache=True)
    if not OmegaConf.has_resolver("unless_resuming"):
        OmegaConf.register_new_resolver("unless_resuming", unless_resuming)
    if not OmegaConf.has_resolver("safe"):
        OmegaConf.register_new_resolver("safe", safe_name)
