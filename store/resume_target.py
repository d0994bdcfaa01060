"""What `resume=` names: a run directory, a checkpoint file inside one, or `latest`.

    resume=outputs/2026-11-26/15-45-04_mlp_digits                    # its checkpoints/last.pt
    resume=outputs/2026-11-26/15-45-04_mlp_digits/checkpoints/step_00000400.pt   # that file
    resume=latest                                                    # the newest unfinished run

Each becomes a (run directory, checkpoint file) pair; the run goes on in that run directory. `latest` is
the newest run directory under paths.output_root (by its YYYY-MM-DD/HH-MM-SS name, then by when its
last.pt was written) that holds checkpoints/last.pt and is not finished: it has no metrics.json, or a
last.pt written after it (a finished run resumed to train longer and stopped again). A run that a live
process is training right now (its .lock is held) is skipped. `./latest` names a directory called latest.

No torch here: this runs while Hydra picks the run directory, before the command line is even parsed
whole (`train.py --help` stays fast).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import NamedTuple

from setup.config import ConfigError
from system.layout import RunDir

LATEST = "latest"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_TIME = re.compile(r"(\d{2}-\d{2}-\d{2})(_.*|-\d+)?", re.ASCII)


class ResumeTarget(NamedTuple):
    run_dir: Path
    checkpoint: Path


def resume_target(value: str, output_root: str) -> ResumeTarget:
    """The run directory and checkpoint file that `resume=value` names (absolute paths; symlinks kept).
    Raises ConfigError in one line when it names neither. The checkpoint itself is not read here (a run
    directory without last.pt yet is reported by the loader)."""
    value = str(value)
    if value == LATEST:
        found = latest_unfinished_run(output_root)
        if found is None:
            root = Path(os.path.abspath(os.path.expanduser(str(output_root))))
            where = f"{root} (it does not exist)" if not root.is_dir() else str(root)
            raise ConfigError(
                f"resume=latest: no unfinished run under {where}: none holds checkpoints/last.pt without a "
                "metrics.json written after it (paths.output_root says where to look)"
            )
        return ResumeTarget(found, RunDir.found(RunDir(found).last))
    path = Path(os.path.abspath(os.path.expanduser(value)))
    if path.is_dir() and not RunDir.is_sharded(path):
        run = RunDir.named_by(path)  # the run, or its checkpoints/ folder
        if not run.is_run():
            raise ConfigError(f"resume={value}: not a run directory (it has no .hydra/ or checkpoints/)")
        return ResumeTarget(run.path, run.found(run.last))
    if path.exists():
        run = RunDir.holding(path)
        if run is None:
            raise ConfigError(
                f"resume={value}: a checkpoint to resume must lie in a run's checkpoints/ folder "
                f"(<run>/checkpoints/last.pt, best.pt or step_<N>.pt); to start a new run from its "
                f"weights, use init_from={value}"
            )
        return ResumeTarget(run.path, path)
    raise ConfigError(f"resume={value}: {path} does not exist")


def find_resume_target(value, output_root: str) -> ResumeTarget | None:
    """resume_target, or None where it would raise: for the run-directory resolver, which must not fail
    inside Hydra (train.py then calls resume_target and reports the mistake in one line)."""
    if not value:
        return None
    try:
        return resume_target(str(value), output_root)
    except ConfigError:
        return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """metrics.json reads back whole and no last.pt was written after it."""
    from system.files import read_json

    run = RunDir(run_dir)
    metrics, last = run.metrics, run.found(run.last)
    try:
        done = metrics.stat().st_mtime_ns
    except OSError:
        return False
    if read_json(metrics) is None:  # half-written by an older version: the run did not finish
        return False
    try:
        return last.stat().st_mtime_ns <= done
    except OSError:
        return True


def _in_use(run_dir: Path) -> bool:
    if not (run_dir / ".lock").exists():
        return False
    from system.lock import RunLock

    return RunLock(run_dir)._owner_alive()


def latest_unfinished_run(output_root: str | os.PathLike) -> Path | None:
    """The newest resumable run directory under output_root/YYYY-MM-DD/, or None."""
    root = Path(os.path.abspath(os.path.expanduser(str(output_root))))
    candidates = []
    try:
        days = [d for d in root.iterdir() if _DAY.fullmatch(d.name) and d.is_dir()]
    except OSError:
        return None
    for day in days:
        try:
            runs = list(day.iterdir())
        except OSError:
            continue
        for run in runs:
            started = _TIME.fullmatch(run.name)
            last = RunDir.found(RunDir(run).last)
            if not started or not last.exists() or is_finished(run):
                continue
            candidates.append((day.name, started[1], last.stat().st_mtime_ns, run.name, run))
    for *_, run in sorted(candidates, reverse=True):
        if not _in_use(run):
            return run
    return None


def ago(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 5 min`, `2 days 4 h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    days = s // 86400
    return f"{days} day{'s' * (days != 1)} {s % 86400 // 3600} h"


def describe_resume(
    value: str, target: ResumeTarget, step: int | None = None, now: float | None = None
) -> str:
    """The log line: `resume=latest: continuing <dir> (step 120, last.pt saved 3 min ago)`."""
    now = time.time() if now is None else now
    facts = [] if step is None else [f"step {step}"]
    try:
        facts.append(f"{target.checkpoint.name} saved {ago(now - target.checkpoint.stat().st_mtime)} ago")
    except OSError:
        facts.append(f"{target.checkpoint.name} not found")
    return f"resume={value}: continuing {target.run_dir} ({', '.join(facts)})"
