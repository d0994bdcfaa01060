"""Run-directory names: readable, safe to serve over HTTP, and unique even for runs started in the same second.

Hydra resolves `hydra.run.dir` through the `run_dir` resolver registered here. This module must stay free of
torch imports: it is loaded before Hydra parses the command line, so `train.py --help` stays fast.

Under torchrun (or a multi-task SLURM job) every rank is its own process and composes the config itself. So
that they all land in one directory, and a restarted job lands there again, the first rank to get here
reserves the name in a marker file, `<root>/.runs/<launch id>_<name>`, and the others read it back.
`process_rank` and the `on_main` resolver keep the other ranks from writing over rank 0's `.hydra/` and
`train.log` (see conf/hydra/default.yaml).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from datetime import datetime

from omegaconf import OmegaConf

from store.resume_target import find_resume_target

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# One answer per (root, name) for the life of the process: Hydra resolves hydra.run.dir more than once.
_reserved: dict[tuple[str, str], str] = {}


def safe_name(text: str) -> str:
    """Reduce user text to letters, digits, '.', '_' and '-'.

    TensorBoard answers 400 for a run whose name holds a double quote, and shells trip on spaces, so
    anything else becomes '_'. Dots and '_' are trimmed from both ends: never '..' nor a hidden file.
    """
    return _UNSAFE.sub("_", str(text)).strip("._") or "run"


# A file name may have 255 bytes; the time stamp, a `-N` suffix and the marker prefix need the rest.
MAX_NAME = 120


def short_name(name: str, limit: int = MAX_NAME) -> str:
    """`name` itself when it fits; else its start and a hash of the whole, so two long names that share
    their start still get two directories."""
    if len(name) <= limit:
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11].rstrip('._-')}-{digest}"


def process_rank() -> int:
    """This process's global rank, as its launcher announces it before torch starts: torchrun's RANK,
    submitit's local task id, or SLURM_PROCID for SLURM tasks (srun, submitit). 0 for a lone process."""
    names = ["RANK"]
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        names.append("SUBMITIT_LOCAL_GLOBALID")  # before SLURM_PROCID, which a salloc shell may hold
    names.append("SLURM_PROCID")
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def launch_id() -> str | None:
    """An id that every rank of one launch shares and that a restart of that launch keeps; None for a lone
    process. torchrun: TORCHELASTIC_RUN_ID (random per launch with --standalone, else --rdzv-id; its
    default "none" is made unique with the id of the torchrun agent, the ranks' common parent). SLURM with
    several tasks: job id and step, kept when the job is requeued."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id:
        return f"torchrun-{run_id}" if run_id != "none" else f"torchrun-agent{os.getppid()}"
    if os.environ.get("SLURM_JOB_ID"):
        # Kept when SLURM requeues the job (preemption, `scontrol requeue`), so the job finds its run again.
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return None


def requeued_slurm_task() -> bool:
    """A single-task SLURM job started again by a requeue: it continues its run (SLURM_RESTART_COUNT > 0)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def _single_task() -> bool:
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ


def on_main(value, otherwise=None):
    """`value` on rank 0, `otherwise` on the other ranks: `${on_main:.hydra}` is null there."""
    return value if process_rank() == 0 else otherwise


def rank_log(filename: str) -> str:
    """`train.log` on rank 0, `train.rank<N>.log` on rank N: one log file per process, none clobbered."""
    rank = process_rank()
    stem, dot, ext = filename.rpartition(".")
    if rank == 0:
        return filename
    return f"{stem}.rank{rank}.{ext}" if dot else f"{filename}.rank{rank}"


def unique_run_dir(root: str, *parts: object) -> str:
    """Create and return `root/YYYY-MM-DD/HH-MM-SS_<parts>`, adding `-2`, `-3`, ... if it already exists.

    The directory is created here with mkdir (atomic), so two runs started in the same second can never
    share it. Hydra later calls makedirs(exist_ok=True) on it, which is then a no-op. The ranks of one
    launch (see launch_id) share the directory that the first of them made.
    """
    name = short_name("_".join(safe_name(p) for p in parts if p not in (None, "")))
    key = (str(root), name)
    if key not in _reserved:
        shared = launch_id()
        if shared and shared.startswith("slurm-") and _single_task() and not requeued_slurm_task():
            # A first start: a new run, even if an earlier run in this allocation (salloc) left a marker.
            _forget_marker(root, name, shared)
        _reserved[key] = _shared_dir(root, name, shared) if shared else _new_dir(root, name)
    return _reserved[key]


def _shared_dir(root: str, name: str, shared: str) -> str:
    """The directory recorded for this launch, or a new one recorded by whichever rank comes first.

    The marker is written whole under a temporary name and hard-linked into place: link() fails if the
    marker exists, so exactly one rank wins, and no rank can ever read a half-written marker.
    """
    runs = os.path.join(str(root), ".runs")
    os.makedirs(runs, exist_ok=True)
    marker = _marker(root, name, shared)
    if os.path.exists(marker):
        return _read_marker(marker)
    path = _new_dir(root, name)
    fd, tmp = tempfile.mkstemp(dir=runs, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(path + "\n")
        os.link(tmp, marker)
        return path
    except FileExistsError:
        os.rmdir(path)  # another rank won the race; ours is still empty
        return _read_marker(marker)
    finally:
        os.unlink(tmp)


def _marker(root: str, name: str, shared: str) -> str:
    return os.path.join(str(root), ".runs", safe_name(f"{shared}_{name}" if name else shared))


def _forget_marker(root: str, name: str, shared: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_marker(root, name, shared))


def _read_marker(marker: str) -> str:
    with open(marker) as f:
        return f.read().strip()


def _new_dir(root: str, name: str) -> str:
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
    return path


def resumable_run_dir(resume, root: str, *parts: object) -> str:
    """`resume=` continues in the run it names (a run dir, a checkpoint in one, or `latest`); otherwise a new
    directory, as unique_run_dir makes it. A `resume` that names no run gets a new directory, where
    train.py then reports the mistake (and removes the directory)."""
    target = find_resume_target(resume, root) if resume else None
    return str(target.run_dir) if target else unique_run_dir(root, *parts)


def unless_resuming(resume, root: str, value):
    """`value` for a new run, null when resuming: `${unless_resuming:${resume},${paths.output_root},.hydra}`
    keeps Hydra from writing the resumed run's fresh compose over the .hydra/ config it started with."""
    return None if resume and find_resume_target(resume, root) else value


# What a new run directory holds before training starts (Hydra's files, the run lock, then the environment and
# TensorBoard's first events); a run stopped or rejected by then leaves none of it. Nothing else is ever deleted.
_BEFORE_TRAINING = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log", ".lock",
                    "env.json")  # fmt: skip
_FIRST_EVENTS = re.compile(r"events\.out\.tfevents\.[^/]+")


def discard_run_dir(path) -> None:
    """Remove a new run directory that a rejected or stopped run left before training (and its day
    directory, if that is now empty). Anything else in it (a user's file, a checkpoint) keeps it whole."""
    if not path or not os.path.isdir(path) or process_rank() != 0:
        return
    root = os.path.normpath(str(path))
    known = {os.path.join(root, f) for f in _BEFORE_TRAINING}
    found = []
    for top, _dirs, files in os.walk(root):
        found += [os.path.normpath(os.path.join(top, f)) for f in files]
    tb = os.path.join(root, "tb")
    if any(f not in known and not (os.path.dirname(f) == tb and _FIRST_EVENTS.fullmatch(os.path.basename(f)))
           for f in found):  # fmt: skip
        return
    for f in found:
        os.unlink(f)
    for sub in (".hydra", "tb", ""):
        try:
            os.rmdir(os.path.join(root, sub))
        except FileNotFoundError:
            continue
        except OSError:
            return
    with contextlib.suppress(OSError):  # the day directory, when empty
        os.rmdir(os.path.dirname(root))


def sweep_direction(mode: str) -> str:
    """An Optuna sweep's direction from the task's mode: `${sweep_direction:${task.mode}}`."""
    return {"min": "minimize", "max": "maximize"}[str(mode)]


def register_resolvers() -> None:
    # use_cache on the run-dir resolvers: the answer travels with the config, so that a submitit job, which
    # unpickles the sweep config in a new process, finds the sweep directory instead of making its own.
    resolvers = {
        "run_dir": (unique_run_dir, True),
        "resumable_run_dir": (resumable_run_dir, True),
        "on_main": (on_main, False),
        "rank_log": (rank_log, False),
        "unless_resuming": (unless_resuming, False),
        "safe": (safe_name, False),
        "sweep_direction": (sweep_direction, False),
    }
    for name, (function, cached) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cached)
